"""Wall-clock timing of runners: warm-up, then blocks of timed runs, interleaved across runners.

Two runners compared on a shared machine are timed in alternating short blocks (A B, B A, ...),
so that a burst of load from another process slows both rather than faking a speed-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from slimkit.measure._energy import EnergyMeter

__all__ = ["LatencyStats", "Timing", "time_interleaved"]


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles and mean of the time of one call (one batch), in milliseconds.

    Example:
        >>> LatencyStats.from_ns([1_000_000, 2_000_000, 3_000_000]).p50_ms
        2.0
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def from_ns(cls, times_ns: Sequence[int]) -> LatencyStats:
        """Summarize raw per-call times in nanoseconds."""
        if not times_ns:
            raise ValueError("no timed runs to summarize")
        ms = np.asarray(times_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), len(ms))


@dataclass(frozen=True)
class Timing:
    """Raw times of one runner at one batch size, and the package energy spent meanwhile."""

    times_ns: list[int]
    batch: int
    joules: float | None

    @property
    def stats(self) -> LatencyStats:
        return LatencyStats.from_ns(self.times_ns)

    @property
    def samples_per_second(self) -> float:
        """Throughput at the median batch time (robust to bursts of load from other jobs)."""
        return self.batch / (self.stats.p50_ms / 1e3)

    @property
    def joules_per_sample(self) -> float | None:
        return None if self.joules is None else self.joules / (self.batch * len(self.times_ns))


def time_interleaved(
    runners: Sequence[Callable[[Tensor], object]],
    inputs: Tensor,
    *,
    warmup: int,
    min_runs: int,
    max_seconds: float,
    rounds: int = 1,
    meter: EnergyMeter | None = None,
) -> list[Timing]:
    """Time each runner on ``inputs``: warm-up, then ``rounds`` alternating blocks per runner.

    Each runner gets at least ``min_runs`` timed calls and about ``max_seconds`` in total: a
    block stops once it has its share of both. The order alternates every round (A B, B A).

    Example:
        >>> import torch
        >>> [t] = time_interleaved([torch.nn.Identity()], torch.zeros(2, 3), warmup=1,
        ...                        min_runs=5, max_seconds=0.01)
        >>> t.stats.runs >= 5
        True
    """
    for runner in runners:
        for _ in range(warmup):
            runner(inputs)
    block_runs = math.ceil(min_runs / rounds)
    block_ns = int(max_seconds * 1e9 / rounds)
    times: list[list[int]] = [[] for _ in runners]
    joules: list[float | None] = [0.0 if meter else None for _ in runners]
    for r in range(rounds):
        order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            before = meter.read() if meter else None
            times[i] += _time_block(runners[i], inputs, block_runs, block_ns)
            if meter and before is not None:
                joules[i] = (joules[i] or 0.0) + meter.joules_since(before)
    return [Timing(t, len(inputs), j) for t, j in zip(times, joules, strict=True)]


def _time_block(
    run: Callable[[Tensor], object], inputs: Tensor, min_runs: int, budget_ns: int
) -> list[int]:
    times: list[int] = []
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        run(inputs)
        t1 = time.perf_counter_ns()
        times.append(t1 - t0)
        if len(times) >= min_runs and t1 - start >= budget_ns:
            return times
