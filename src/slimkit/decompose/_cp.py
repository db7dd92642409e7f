"""CP (CANDECOMP/PARAFAC) of a conv kernel, as four plain convs.

``W[o, i, y, x] = sum_r A[o, r] B[i, r] C[y, r] D[x, r]``: a 1x1 conv by ``B^T`` (in -> R), a
depthwise kx1 conv by ``C``, a depthwise 1xk conv by ``D`` (both carry the stride, padding and
dilation of their axis), and a 1x1 conv by ``A`` (R -> out) with the original bias.

Fitted by alternating least squares started from the leading singular vectors of each
unfolding (HOSVD; random columns where the rank exceeds a mode's size). The MTTKRP of every
mode is two matrix products and small elementwise reductions, so no ``[I*k*k, R]``-sized
Khatri-Rao product of the large modes is ever built.

CP fits of real kernels are often *degenerate*: rank-1 terms with norms far above the kernel's
own, cancelling each other (a tensor whose border rank is below its rank has no best low-rank
approximation, and ALS drifts towards one). :class:`CPFit` reports the largest term norm
relative to the kernel's norm; the factors are always returned with balanced norms (each of the
four factors of a term carries the fourth root of its norm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slimkit.decompose._layers import Factorization, LayerGeometry, conv2d, relative_errors

__all__ = ["CPFit", "cp_als", "cp_cost", "cp_kernel", "cp_option"]


@dataclass(frozen=True)
class CPFit:
    """The result of :func:`cp_als`.

    Attributes:
        factors: ``(A [out, R], B [in, R], C [kh, R], D [kw, R])``, float64, norms balanced.
        error: ``||W - W_hat|| / ||W||``.
        iterations: ALS sweeps run.
        term_ratio: The largest rank-1 term's norm over the kernel's norm (1 or less for a
            well-behaved fit; far above for a degenerate one).
        finite: Whether ALS stayed finite (a diverging fit may not).
    """

    factors: tuple[Tensor, Tensor, Tensor, Tensor]
    error: float
    iterations: int
    term_ratio: float
    finite: bool

    def degenerate(self, ratio: float) -> bool:
        """Whether a term's norm exceeds the kernel's by more than ``ratio`` (or ALS diverged)."""
        return not self.finite or self.term_ratio > ratio


def cp_kernel(factors: tuple[Tensor, ...]) -> Tensor:
    """The kernel ``sum_r A[:, r] o B[:, r] o C[:, r] o D[:, r]`` of CP factors."""
    a, b, c, d = factors
    return torch.einsum("or,ir,yr,xr->oiyx", a, b, c, d)


def cp_als(
    kernel: Tensor,
    rank: int,
    *,
    iterations: int = 100,
    tolerance: float = 1e-6,
    seed: int = 0,
) -> CPFit:
    """Fit a rank-``rank`` CP model to a 4-d kernel by ALS with HOSVD initialization.

    Args:
        kernel: ``[out, in, kh, kw]``.
        rank: Number of rank-1 terms.
        iterations: Most ALS sweeps.
        tolerance: Stop when the relative error changes less than this in one sweep.
        seed: Seed of the random start columns (where ``rank`` exceeds a mode's size).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> parts = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (6, 5, 3, 3)]
        >>> fit = cp_als(cp_kernel(parts), 3, iterations=300)
        >>> fit.error < 1e-4, fit.term_ratio < 10
        (True, True)
    """
    t = kernel.double()
    out_ch, in_ch, kh, kw = t.shape
    gen = torch.Generator().manual_seed(seed)
    a, b, c, d = (_hosvd_start(t, mode, rank, gen) for mode in range(4))
    norm2 = float(t.square().sum())
    by_out = t.permute(0, 2, 3, 1).reshape(out_ch * kh * kw, in_ch)  # [(o, y, x), i]
    by_in = t.permute(1, 2, 3, 0).reshape(in_ch * kh * kw, out_ch)  # [(i, y, x), o]
    previous, sweeps, finite = float("inf"), 0, True
    for sweeps in range(1, iterations + 1):  # noqa: B007 (the count is reported)
        p = (by_out @ b).reshape(out_ch, kh, kw, rank)
        a = _solve(
            _gram(b) * _gram(c) * _gram(d), (p * c[None, :, None] * d[None, None]).sum((1, 2))
        )
        q = (by_in @ a).reshape(in_ch, kh, kw, rank)
        ga = _gram(a)
        b = _solve(ga * _gram(c) * _gram(d), (q * c[None, :, None] * d[None, None]).sum((1, 2)))
        gb = _gram(b)
        c = _solve(ga * gb * _gram(d), torch.einsum("iyxr,ir,xr->yr", q, b, d))
        gc = _gram(c)
        m_last = torch.einsum("iyxr,ir,yr->xr", q, b, c)
        d = _solve(ga * gb * gc, m_last)
        fit2 = float((ga * gb * gc * _gram(d)).sum())
        inner = float((m_last * d).sum())
        if not all(torch.isfinite(f).all() for f in (a, b, c, d)):
            finite = False
            break
        error = (max(norm2 - 2 * inner + fit2, 0.0) / norm2) ** 0.5 if norm2 > 0 else 0.0
        if abs(previous - error) < tolerance:
            break
        previous = error
    factors = _balanced((a, b, c, d)) if finite else (a, b, c, d)
    return _summary(t, factors, sweeps, finite)


def _summary(t: Tensor, factors: tuple[Tensor, ...], sweeps: int, finite: bool) -> CPFit:
    norm = float(t.norm())
    if not finite or norm == 0:
        return CPFit(factors, float("inf") if norm else 0.0, sweeps, float("inf"), finite)  # type: ignore[arg-type]
    error = float((cp_kernel(factors) - t).norm()) / norm
    terms = torch.stack([f.norm(dim=0) for f in factors]).prod(0)
    return CPFit(factors, error, sweeps, float(terms.max()) / norm, finite)  # type: ignore[arg-type]


def _hosvd_start(t: Tensor, mode: int, rank: int, gen: torch.Generator) -> Tensor:
    unfolded = t.movedim(mode, 0).reshape(t.shape[mode], -1)
    u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
    u = u[:, :rank]
    if u.shape[1] < rank:  # more terms than the mode has directions: random further columns
        extra = torch.randn(t.shape[mode], rank - u.shape[1], generator=gen, dtype=t.dtype)
        u = torch.cat([u, extra / t.shape[mode] ** 0.5], 1)
    return u


def _gram(f: Tensor) -> Tensor:
    return f.T @ f


def _solve(gram: Tensor, mttkrp: Tensor) -> Tensor:
    """``mttkrp @ gram^-1`` (``gram`` symmetric), slightly regularized for stability."""
    ridge = 1e-12 * float(gram.diagonal().mean().abs()) + 1e-300
    eye = torch.eye(len(gram), dtype=gram.dtype)
    solution, info = torch.linalg.solve_ex(gram + ridge * eye, mttkrp.T)
    if int(info) != 0:
        solution = torch.linalg.pinv(gram, hermitian=True) @ mttkrp.T
    return solution.T


def _balanced(factors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Each term's norm spread evenly over its four factors (same kernel, tamer values)."""
    norms = torch.stack([f.norm(dim=0) for f in factors])  # [4, R]
    share = norms.prod(0).clamp_min(1e-300) ** (1 / len(factors))
    return tuple(f / n.clamp_min(1e-300) * share for f, n in zip(factors, norms, strict=True))


def cp_cost(geo: LayerGeometry, rank: int) -> tuple[int, int]:
    """MACs (one sample) and parameters of the four convs at ``rank``."""
    kh, kw = geo.kernel
    macs = (
        geo.in_ch * rank * geo.positions_in
        + kh * rank * geo.positions_mid
        + (kw * rank + rank * geo.out_ch) * geo.positions_out
    )
    params = geo.in_ch * rank + kh * rank + kw * rank + rank * geo.out_ch
    return macs, params + (geo.out_ch if geo.bias else 0)


def cp_option(
    module: nn.Conv2d,
    geo: LayerGeometry,
    rank: int,
    *,
    iterations: int,
    tolerance: float,
    seed: int,
    cov: Tensor | None,
) -> tuple[Factorization, CPFit]:
    """The CP factorization of ``module`` at ``rank``, and the fit it came from."""
    weight = module.weight.detach()
    fit = cp_als(weight, rank, iterations=iterations, tolerance=tolerance, seed=seed)
    if fit.finite:
        weight_error, act_error = relative_errors(weight, cp_kernel(fit.factors), cov)
    else:
        weight_error, act_error = float("inf"), (None if cov is None else float("inf"))
    macs, params = cp_cost(geo, rank)
    bias = None if module.bias is None else module.bias.detach()
    build = _builder(geo, fit.factors, bias, weight.dtype)
    notes = {"cp_term_ratio": round(fit.term_ratio, 3), "cp_iterations": fit.iterations}
    option = Factorization("cp", (rank,), macs, params, weight_error, act_error, build, notes)
    return option, fit


def _builder(
    geo: LayerGeometry, factors: tuple[Tensor, ...], bias: Tensor | None, dtype: torch.dtype
) -> Callable[[], nn.Sequential]:
    a, b, c, d = (f.to(dtype) for f in factors)
    rank = a.shape[1]
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation

    def build() -> nn.Sequential:
        return nn.Sequential(
            conv2d(b.T[:, :, None, None]),
            conv2d(
                c.T[:, None, :, None],
                stride=(sh, 1),
                padding=(ph, 0),
                dilation=(dh, 1),
                groups=rank,
            ),
            conv2d(
                d.T[:, None, None, :],
                stride=(1, sw),
                padding=(0, pw),
                dilation=(1, dw),
                groups=rank,
            ),
            conv2d(a[:, :, None, None], bias=bias),
        )

    return build
