"""Tucker-2 of a conv kernel on its output and input modes: 1x1 -> k x k core -> 1x1.

``W[o, i, y, x] = sum_{a, b} U_out[o, a] G[a, b, y, x] U_in[i, b]``: the input channels are
projected to ``r_in`` (a 1x1 conv by ``U_in^T``), the core convolves ``r_in`` to ``r_out``
channels with the original kernel size, stride and padding, and ``U_out`` (a 1x1 conv) maps back
to the output channels with the original bias. Fitted by HOSVD (leading singular vectors of the
two unfoldings), refined by a few HOOI sweeps (each factor re-fitted with the other fixed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from slimkit.decompose._layers import Factorization, LayerGeometry, conv2d, relative_errors

__all__ = ["tucker2", "tucker2_cost", "tucker2_option", "tucker2_rank_limits"]


def tucker2(weight: Tensor, ranks: tuple[int, int], iterations: int = 3) -> tuple[Tensor, ...]:
    """``(U_out [out, r_out], core [r_out, r_in, kh, kw], U_in [in, r_in])``, in float64.

    Example:
        >>> w = torch.randn(8, 6, 3, 3)
        >>> u_out, core, u_in = tucker2(w, (8, 6))
        >>> approx = torch.einsum("oa,abyx,ib->oiyx", u_out, core, u_in)
        >>> float((approx - w.double()).abs().max()) < 1e-10
        True
    """
    w = weight.double()
    out_ch, in_ch = w.shape[:2]
    r_out, r_in = ranks
    u_out = _leading(w.reshape(out_ch, -1), r_out)
    u_in = _leading(w.transpose(0, 1).reshape(in_ch, -1), r_in)
    for _ in range(iterations):
        projected = torch.einsum("oiyx,ib->obyx", w, u_in)
        u_out = _leading(projected.reshape(out_ch, -1), r_out)
        projected = torch.einsum("oiyx,oa->iayx", w, u_out)
        u_in = _leading(projected.reshape(in_ch, -1), r_in)
    core = torch.einsum("oiyx,oa,ib->abyx", w, u_out, u_in)
    return u_out, core, u_in


def _leading(matrix: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of ``matrix`` (eigenvectors of its small
    ``M M^T``: much faster than an SVD of the wide unfolding)."""
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)
    return vectors[:, -rank:].flip(1)


def tucker2_rank_limits(geo: LayerGeometry) -> tuple[int, int]:
    """The largest useful ``(r_out, r_in)``: the ranks of the two unfoldings."""
    kh, kw = geo.kernel
    return min(geo.out_ch, geo.in_ch * kh * kw), min(geo.in_ch, geo.out_ch * kh * kw)


def tucker2_cost(geo: LayerGeometry, ranks: tuple[int, int]) -> tuple[int, int]:
    """MACs (one sample) and parameters of the three convs at ``ranks``."""
    r_out, r_in = ranks
    kh, kw = geo.kernel
    first, core, last = geo.in_ch * r_in, r_in * r_out * kh * kw, r_out * geo.out_ch
    macs = first * geo.positions_in + (core + last) * geo.positions_out
    return macs, first + core + last + (geo.out_ch if geo.bias else 0)


def tucker2_option(
    module: nn.Conv2d,
    geo: LayerGeometry,
    ranks: tuple[int, int],
    iterations: int,
    cov: Tensor | None,
) -> Factorization:
    """The Tucker-2 factorization of ``module`` at ``ranks`` with its errors and cost."""
    weight = module.weight.detach()
    u_out, core, u_in = tucker2(weight, ranks, iterations)
    approx = torch.einsum("oa,abyx,ib->oiyx", u_out, core, u_in)
    weight_error, act_error = relative_errors(weight, approx, cov)
    macs, params = tucker2_cost(geo, ranks)
    bias = None if module.bias is None else module.bias.detach()
    build = _builder(geo, u_out, core, u_in, bias, weight.dtype)
    return Factorization("tucker2", ranks, macs, params, weight_error, act_error, build)


def _builder(
    geo: LayerGeometry,
    u_out: Tensor,
    core: Tensor,
    u_in: Tensor,
    bias: Tensor | None,
    dtype: torch.dtype,
) -> Callable[[], nn.Sequential]:
    first = u_in.T[:, :, None, None].to(dtype)
    core = core.to(dtype)
    last = u_out[:, :, None, None].to(dtype)

    def build() -> nn.Sequential:
        return nn.Sequential(
            conv2d(first),
            conv2d(core, stride=geo.stride, padding=geo.padding, dilation=geo.dilation),
            conv2d(last, bias=bias),
        )

    return build
