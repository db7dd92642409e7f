"""Measurement: parameters, MACs, size on disk, latency, throughput, peak RAM, energy, accuracy.

Every number slimkit reports comes from here, measured on a :class:`Runner` (one per runtime),
with the thread count stated. Speed-ups come from :func:`compare`, which interleaves the timings
of the two models so that a busy, shared machine cannot fake a gain.

Example:
    >>> from slimkit.measure import ProfileConfig, profile
    >>> from slimkit.models import create_model
    >>> cfg = ProfileConfig(max_seconds=0.05, min_runs=3, warmup=1, memory=False)
    >>> report = profile(create_model("fmnist_tiny"), config=cfg)
    >>> report.latency.p50_ms <= report.latency.p99_ms
    True
"""

from __future__ import annotations

from slimkit.measure._accuracy import accuracies, accuracy
from slimkit.measure._counts import MacCount, count_macs, count_params
from slimkit.measure._energy import EnergyMeter, EnergyReading, open_rapl
from slimkit.measure._latency import LatencyStats, Timing, time_interleaved
from slimkit.measure._memory import MeasurementError, MemoryReading, measure_peak_ram
from slimkit.measure._profile import COMPARE_ROUNDS, ProfileConfig, compare, profile
from slimkit.measure._report import Comparison, ProfileReport
from slimkit.measure._runner import (
    Runner,
    RunnerSpec,
    TorchEagerRunner,
    as_runner,
    get_runner,
    list_runners,
    register_runner,
)

__all__ = [
    "COMPARE_ROUNDS",
    "Comparison",
    "EnergyMeter",
    "EnergyReading",
    "LatencyStats",
    "MacCount",
    "MeasurementError",
    "MemoryReading",
    "ProfileConfig",
    "ProfileReport",
    "Runner",
    "RunnerSpec",
    "Timing",
    "TorchEagerRunner",
    "accuracies",
    "accuracy",
    "as_runner",
    "compare",
    "count_macs",
    "count_params",
    "get_runner",
    "list_runners",
    "measure_peak_ram",
    "open_rapl",
    "profile",
    "register_runner",
    "time_interleaved",
]
