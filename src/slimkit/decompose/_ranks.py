"""Rank selection: energy kept, analytic VBMF, and global allocation under a budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["allocate", "candidate_ranks", "energy_rank", "evbmf_rank", "round_rank"]


def energy_rank(squared: Tensor, energy: float) -> int:
    """The smallest rank whose leading squared singular values hold ``energy`` of their sum.

    Example:
        >>> energy_rank(torch.tensor([9.0, 4.0, 1.0]), 0.9)
        2
        >>> energy_rank(torch.zeros(3), 0.9)
        1
    """
    total = float(squared.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(squared.double(), 0) / total
    return max(1, int((kept < energy - 1e-12).sum()) + 1)


def evbmf_rank(matrix: Tensor) -> int:
    """The rank estimated by analytic empirical variational Bayes matrix factorization.

    The noise variance is found by minimizing the EVBMF free energy (Nakajima et al., "Global
    analytic solution of fully-observed variational Bayesian matrix factorization", JMLR
    2013); components whose singular value exceeds the resulting threshold are kept. Never 0:
    a matrix of pure noise, or of zeros, gets rank 1 (the caller decides whether rank 1 is
    worth a factorization).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> signal = torch.randn(60, 5, generator=g) @ torch.randn(5, 80, generator=g)
        >>> evbmf_rank(signal + 0.1 * torch.randn(60, 80, generator=g))
        5
        >>> evbmf_rank(torch.randn(60, 80, generator=g)), evbmf_rank(torch.zeros(8, 8))
        (1, 1)
    """
    y = matrix.double()
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    s = torch.linalg.svdvals(y)
    if rows < 2 or float(s[0]) <= 1e-12 * max(1.0, float(y.abs().max())):
        return 1
    alpha = rows / cols
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s2 = s.square()
    upper = float(s2.sum()) / (rows * cols)
    bound = min(int(math.ceil(rows / (1 + alpha)) - 1), rows) - 1
    tail = s2[bound + 1 :] if bound + 1 < rows else s2[-1:]
    lower = max(float(tail[0]) / (cols * x_bar), float(tail.mean()) / cols)
    if not lower < upper:
        sigma2 = upper
    else:
        sigma2 = _golden_min(lambda v: _evb_free_energy(v, rows, cols, s2, x_bar), lower, upper)
    threshold = math.sqrt(cols * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return max(1, int((s > threshold).sum()))


def _evb_free_energy(sigma2: float, rows: int, cols: int, s2: Tensor, x_bar: float) -> float:
    alpha = rows / cols
    x = s2 / (cols * sigma2)
    big, small = x[x > x_bar], x[x <= x_bar]
    tau = 0.5 * (big - (1 + alpha) + torch.sqrt((big - (1 + alpha)).square() - 4 * alpha))
    value = (
        (small - torch.log(small)).sum()
        + (big - tau).sum()
        + torch.log((tau + 1) / big).sum()
        + alpha * torch.log(tau / alpha + 1).sum()
    )
    return float(value)


def _golden_min(f: Callable[[float], float], lo: float, hi: float, steps: int = 80) -> float:
    """The minimum of a unimodal ``f`` on ``[lo, hi]`` by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def round_rank(rank: int, limit: int, round_to: int) -> int:
    """``rank`` rounded up to a multiple of ``round_to``, within ``[1, limit]``; unrounded when
    ``limit`` is below ``2 * round_to``.

    Example:
        >>> round_rank(13, 64, 8), round_rank(13, 12, 8), round_rank(0, 4, 8)
        (16, 12, 1)
    """
    if limit < 2 * round_to:  # a small layer: any rank (as candidate_ranks)
        return max(1, min(rank, limit))
    rounded = -(-max(rank, 1) // round_to) * round_to
    return max(1, min(rounded, limit))


def candidate_ranks(limit: int, round_to: int) -> list[int]:
    """Ranks worth considering: multiples of ``round_to`` up to ``limit`` (all when small).

    Example:
        >>> candidate_ranks(20, 8), candidate_ranks(5, 8)
        ([8, 16, 20], [1, 2, 3, 4, 5])
    """
    if limit < 2 * round_to:
        return list(range(1, limit + 1))
    ranks = list(range(round_to, limit + 1, round_to))
    return ranks if ranks[-1] == limit else [*ranks, limit]


def allocate(
    options: Sequence[Sequence[tuple[float, float]]], fixed: float, budget: float
) -> tuple[list[int], float]:
    """Greedy global allocation: the cheapest total error that fits ``budget``.

    ``options[l]`` lists layer ``l``'s choices as ``(cost, error)``; choice 0 is the layer as
    it is (its full cost, error 0). Starting from every layer's choice 0, the move with the
    least error added per unit of cost saved (over all layers and all their cheaper choices)
    is taken until the total cost, ``fixed`` included, is within ``budget``.

    Returns:
        The chosen index per layer and the total cost reached (above ``budget`` when even the
        cheapest choices do not fit).

    Example:
        >>> allocate([[(10, 0.0), (5, 0.1), (2, 0.5)], [(10, 0.0), (5, 0.05)]], 0, 12)
        ([1, 1], 10)
    """
    chosen = [0] * len(options)
    total = fixed + sum(layer[0][0] for layer in options)
    while total > budget:
        best: tuple[float, int, int] | None = None
        for i, layer in enumerate(options):
            cost, error = layer[chosen[i]]
            for j, (c, e) in enumerate(layer):
                if c < cost:
                    slope = (e - error) / (cost - c)
                    if best is None or slope < best[0]:
                        best = (slope, i, j)
        if best is None:
            break
        _, i, j = best
        total += options[i][j][0] - options[i][chosen[i]][0]
        chosen[i] = j
    return chosen, _give_back(options, chosen, total, budget)


def _give_back(
    options: Sequence[Sequence[tuple[float, float]]], chosen: list[int], total: float, budget: float
) -> float:
    """Spend what the last greedy move left under the budget on the best error reductions."""
    while True:
        best: tuple[float, int, int] | None = None
        for i, layer in enumerate(options):
            cost, error = layer[chosen[i]]
            for j, (c, e) in enumerate(layer):
                if c > cost and e < error and total + c - cost <= budget:
                    gain = (error - e) / (c - cost)
                    if best is None or gain > best[0]:
                        best = (gain, i, j)
        if best is None:
            return total
        _, i, j = best
        total += options[i][j][0] - options[i][chosen[i]][0]
        chosen[i] = j
