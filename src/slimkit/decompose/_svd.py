"""SVD splits: a Linear as two Linears, a conv as a conv to ``r`` channels then a 1x1 (channel
SVD), a k x k conv as kx1 then 1xk (spatial SVD); optionally fitted to the layer's real inputs.

Activation-whitened SVD: with the input covariance ``C = X^T X = L L^T`` (Cholesky), the rank-r
``W_hat`` minimizing ``||(W - W_hat) X^T||`` is the truncated SVD of ``W L`` mapped back by
``L^-1``: the error is minimal on the activations the layer really sees, not on its weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from slimkit.decompose._layers import (
    Factorization,
    LayerGeometry,
    conv2d,
    linear,
    relative_errors,
)

__all__ = [
    "SvdBasis",
    "channel_svd_macs",
    "cholesky_factor",
    "spatial_matrix",
    "spatial_svd_macs",
    "spatial_svd_options",
    "svd_basis",
    "svd_options",
]


def cholesky_factor(cov: Tensor, damping: float) -> Tensor:
    """Lower ``L`` with ``L L^T = cov + eps I``, ``eps = damping * mean(diag(cov))``.

    The damping grows tenfold until the factorization succeeds (dead inputs make ``cov``
    singular).

    Example:
        >>> L = cholesky_factor(torch.eye(3, dtype=torch.float64) * 4, 1e-6)
        >>> torch.allclose(L, torch.eye(3, dtype=torch.float64) * 2, atol=1e-5)
        True
    """
    cov = cov.double()
    scale = float(cov.diagonal().mean()) or 1.0
    eye = torch.eye(len(cov), dtype=cov.dtype)
    for attempt in range(8):
        factor, info = torch.linalg.cholesky_ex(cov + eye * (scale * damping * 10**attempt))
        if int(info) == 0:
            return factor
    raise ValueError("the input covariance could not be factored even with heavy damping")


class SvdBasis:
    """The SVD of a weight matrix ``[out, fan_in]`` from which every rank is cut cheaply.

    With ``whiten`` (a Cholesky factor ``L`` of the input covariance), the SVD is of ``W L``
    and the right factors are mapped back by ``L^-1``. Errors of every rank come from the
    singular values: ``U`` is orthonormal, so ``||sum_{i>=r} u_i s_i r_i||^2 = sum s_i^2 |r_i|^2``
    and its activation energy is ``sum s_i^2 r_i C r_i^T``.

    Example:
        >>> w = torch.randn(6, 4, dtype=torch.float64)
        >>> basis = SvdBasis(w)
        >>> left, right = basis.factors(4)
        >>> torch.allclose(left @ right, w)
        True
        >>> basis.weight_error(4) < 1e-12, round(basis.weight_error(0), 6)
        (True, 1.0)
    """

    def __init__(
        self, matrix: Tensor, cov: Tensor | None = None, whiten: Tensor | None = None
    ) -> None:
        w = matrix.double()
        target = w @ whiten if whiten is not None else w
        u, s, vh = torch.linalg.svd(target, full_matrices=False)
        if whiten is not None:  # rows of Vh L^-1: solve X L = Vh
            vh = torch.linalg.solve_triangular(whiten, vh, upper=False, left=False)
        self.u, self.s, self.rows = u, s, vh
        self.whitened = whiten is not None
        s2 = s.square()
        self._weight_energy = s2 * vh.square().sum(1)
        self._weight_total = float(w.square().sum())
        self._act_energy = None if cov is None else s2 * ((vh @ cov) * vh).sum(1)
        self._act_total = None if cov is None else float(((w @ cov) * w).sum())

    @property
    def max_rank(self) -> int:
        return len(self.s)

    def factors(self, rank: int) -> tuple[Tensor, Tensor]:
        """``left [out, rank]`` and ``right [rank, fan_in]``, the singular values split evenly."""
        root = self.s[:rank].sqrt()
        return self.u[:, :rank] * root, root[:, None] * self.rows[:rank]

    def weight_error(self, rank: int) -> float:
        """``||W - W_hat|| / ||W||`` at ``rank``."""
        return _ratio(float(self._weight_energy[rank:].sum()), self._weight_total)

    def activation_error(self, rank: int) -> float | None:
        """``||(W - W_hat) X|| / ||W X||`` at ``rank`` (``None`` without a covariance)."""
        if self._act_energy is None or self._act_total is None:
            return None
        return _ratio(float(self._act_energy[rank:].sum()), self._act_total)

    def energy_spectrum(self) -> Tensor:
        """Squared singular values of the matrix that was factored."""
        return self.s.square()


def _ratio(lost: float, total: float) -> float:
    return (max(lost, 0.0) / total) ** 0.5 if total > 0 else 0.0


def channel_svd_macs(geo: LayerGeometry, rank: int) -> tuple[int, int]:
    """MACs and parameters of the SVD split at ``rank`` (Linear, 1x1 or channel SVD)."""
    first = geo.fan_in * rank
    second = rank * geo.out_ch
    bias = geo.out_ch if geo.bias else 0
    return (first + second) * geo.positions_out, first + second + bias


def svd_basis(weight: Tensor, cov: Tensor | None, whiten: Tensor | None) -> SvdBasis:
    """The basis of a Linear or conv weight flattened to ``[out, fan_in]``."""
    return SvdBasis(weight.reshape(weight.shape[0], -1), cov, whiten)


def svd_options(
    module: nn.Linear | nn.Conv2d,
    geo: LayerGeometry,
    basis: SvdBasis,
    ranks: list[int],
) -> list[Factorization]:
    """The SVD split of ``module`` at each of ``ranks``, built from one ``basis``."""
    options = []
    for rank in ranks:
        macs, params = channel_svd_macs(geo, rank)
        notes = {"data_aware": True} if basis.whitened else {}
        options.append(
            Factorization(
                "svd",
                (rank,),
                macs,
                params,
                basis.weight_error(rank),
                basis.activation_error(rank),
                _svd_builder(module, geo, basis, rank),
                notes,
            )
        )
    return options


def _svd_builder(
    module: nn.Module, geo: LayerGeometry, basis: SvdBasis, rank: int
) -> Callable[[], nn.Sequential]:
    left, right = basis.factors(rank)
    dtype = module.weight.dtype
    left, right = left.to(dtype), right.to(dtype)
    bias = None if module.bias is None else module.bias.detach()

    def build() -> nn.Sequential:
        if geo.kind == "linear":
            return nn.Sequential(linear(right), linear(left, bias))
        kh, kw = geo.kernel
        first = conv2d(
            right.reshape(rank, geo.in_ch, kh, kw),
            stride=geo.stride,
            padding=geo.padding,
            dilation=geo.dilation,
        )
        return nn.Sequential(first, conv2d(left[:, :, None, None], bias=bias))

    return build


def spatial_svd_macs(geo: LayerGeometry, rank: int) -> tuple[int, int]:
    """MACs and parameters of the kx1 -> 1xk split at ``rank``."""
    kh, kw = geo.kernel
    vertical = geo.in_ch * kh * rank
    horizontal = rank * kw * geo.out_ch
    macs = vertical * geo.positions_mid + horizontal * geo.positions_out
    return macs, vertical + horizontal + (geo.out_ch if geo.bias else 0)


def spatial_matrix(weight: Tensor) -> Tensor:
    """``W[o, i, y, x]`` as the matrix ``M[(i, y), (o, x)]`` whose rank is the split's rank."""
    out_ch, in_ch, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(in_ch * kh, out_ch * kw)


def spatial_svd_options(
    module: nn.Conv2d,
    geo: LayerGeometry,
    ranks: list[int],
    cov: Tensor | None,
) -> list[Factorization]:
    """Spatial SVD: ``W[o,i,y,x] = sum_r V[r,i,y] H[o,r,x]``, a kx1 conv then a 1xk conv."""
    weight = module.weight.detach()
    out_ch, in_ch, kh, kw = weight.shape
    basis = SvdBasis(spatial_matrix(weight))
    bias = None if module.bias is None else module.bias.detach()
    options = []
    for rank in ranks:
        left, right = basis.factors(rank)  # left [(i, y), r], right [r, (o, x)]
        vertical = left.T.reshape(rank, in_ch, kh, 1)
        horizontal = right.reshape(rank, out_ch, kw).permute(1, 0, 2).reshape(out_ch, rank, 1, kw)
        approx = torch.einsum("riy,orx->oiyx", vertical[..., 0], horizontal[:, :, 0])
        weight_error, act_error = relative_errors(weight, approx, cov)
        macs, params = spatial_svd_macs(geo, rank)
        build = _spatial_builder(geo, vertical.to(weight.dtype), horizontal.to(weight.dtype), bias)
        options.append(
            Factorization("spatial_svd", (rank,), macs, params, weight_error, act_error, build)
        )
    return options


def _spatial_builder(
    geo: LayerGeometry, vertical: Tensor, horizontal: Tensor, bias: Tensor | None
) -> Callable[[], nn.Sequential]:
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation

    def build() -> nn.Sequential:
        first = conv2d(vertical, stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1))
        second = conv2d(horizontal, stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=bias)
        return nn.Sequential(first, second)

    return build
