"""The speed gate: a factorization is kept only where it is measured faster than the layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimkit._runtime import num_threads
from slimkit.measure import time_interleaved

__all__ = ["measure_speedup"]

GATE_ROUNDS = 4


def measure_speedup(
    original: nn.Module,
    factorized: nn.Module,
    x: Tensor,
    *,
    seconds: float = 0.2,
    threads: int = 1,
) -> float:
    """The original layer's median time over the factorized one's on input ``x``.

    Both run in PyTorch eager mode under inference mode, timed in interleaved blocks (A B, B A,
    ...) so that load from other processes slows both alike; the median over all runs is
    compared.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> big = nn.Linear(512, 512)
        >>> small = nn.Sequential(nn.Linear(512, 16), nn.Linear(16, 512))
        >>> measure_speedup(big, small, torch.randn(64, 512), seconds=0.05) > 1
        True
    """
    with num_threads(threads), torch.inference_mode():
        timings = time_interleaved(
            [original, factorized],
            x,
            warmup=3,
            min_runs=10,
            max_seconds=seconds,
            rounds=GATE_ROUNDS,
        )
    base, candidate = (t.stats.p50_ms for t in timings)
    return base / candidate
