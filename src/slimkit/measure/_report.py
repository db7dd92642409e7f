"""The results of :func:`~slimkit.measure.profile` and :func:`~slimkit.measure.compare`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from slimkit.measure._energy import EnergyReading
from slimkit.measure._latency import LatencyStats

__all__ = ["Comparison", "ProfileReport"]


@dataclass(frozen=True)
class ProfileReport:
    """Everything measured about one runner.

    Attributes:
        runner: Name of the runner (``"torch-eager"``, ...).
        threads: Intra-op threads used for timing and peak RAM.
        params: Parameters (tied parameters counted once); ``params_nonzero`` those not zero.
        macs: Multiply-accumulates of one sample (batch 1); ``None`` when not countable, with the
            reason in ``macs_note``. Elementwise operations are not counted.
        size_bytes: Size of the serialized artifact on disk.
        peak_ram_bytes: RAM that the runner and its inference add over an idle interpreter with
            torch imported (``VmHWM`` - baseline) at ``throughput_batch``; ``peak_rss_bytes`` is
            the absolute ``VmHWM``. Both ``None`` when memory was not measured.
        latency: Time of one call at ``latency_batch``.
        throughput: Samples per second at ``throughput_batch`` (from the median batch time).
        accuracy: Top-1 accuracy on the data given, else ``None``.
        energy: Joules per sample at ``throughput_batch``, or why not available.
    """

    runner: str
    threads: int
    params: int
    params_nonzero: int
    macs: int | None
    macs_note: str | None
    size_bytes: int
    peak_ram_bytes: int | None
    peak_rss_bytes: int | None
    latency: LatencyStats
    latency_batch: int
    throughput: float
    throughput_batch: int
    accuracy: float | None
    energy: EnergyReading

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with stable keys (``latency`` and ``energy`` nested)."""
        return dataclasses.asdict(self)

    def to_table(self) -> Table:
        """A two-column rich table for the terminal."""
        table = Table(title=f"{self.runner}, {self.threads} thread(s)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in _rows(self):
            table.add_row(name, value)
        return table


@dataclass(frozen=True)
class Comparison:
    """A baseline and a candidate measured side by side, with the candidate's ratios.

    Speed-ups are baseline / candidate times (above 1: the candidate is faster); the other ratios
    are candidate / baseline (below 1: the candidate is smaller).
    """

    baseline: ProfileReport
    candidate: ProfileReport

    @property
    def latency_speedup(self) -> float:
        return self.baseline.latency.p50_ms / self.candidate.latency.p50_ms

    @property
    def throughput_speedup(self) -> float:
        return self.candidate.throughput / self.baseline.throughput

    @property
    def params_ratio(self) -> float | None:
        return _ratio(self.candidate.params, self.baseline.params)

    @property
    def macs_ratio(self) -> float | None:
        return _ratio(self.candidate.macs, self.baseline.macs)

    @property
    def size_ratio(self) -> float | None:
        return _ratio(self.candidate.size_bytes, self.baseline.size_bytes)

    @property
    def accuracy_delta(self) -> float | None:
        if self.baseline.accuracy is None or self.candidate.accuracy is None:
            return None
        return self.candidate.accuracy - self.baseline.accuracy

    def _changes(self) -> list[str]:
        # In the order of _rows: parameters, MACs, size, peak RAM, latency, throughput,
        # accuracy, energy.
        delta = self.accuracy_delta
        return [
            _times(self.params_ratio),
            _times(self.macs_ratio),
            _times(self.size_ratio),
            _times(_ratio(self.candidate.peak_ram_bytes, self.baseline.peak_ram_bytes)),
            _speedup(self.latency_speedup),
            _speedup(self.throughput_speedup),
            "" if delta is None else f"{100 * delta:+.2f} pp",
            "",
        ]

    def ratios(self) -> dict[str, float | None]:
        """The ratio properties by name."""
        names = (
            "latency_speedup",
            "throughput_speedup",
            "params_ratio",
            "macs_ratio",
            "size_ratio",
        )
        return {n: getattr(self, n) for n in (*names, "accuracy_delta")}

    def to_dict(self) -> dict[str, Any]:
        """``{"baseline": ..., "candidate": ..., "ratios": ...}``, JSON-able."""
        return {
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
            "ratios": self.ratios(),
        }

    def to_table(self) -> Table:
        """A rich table: one row per metric, baseline and candidate side by side."""
        title = f"baseline ({self.baseline.runner}) vs candidate ({self.candidate.runner})"
        table = Table(title=f"{title}, {self.candidate.threads} thread(s)")
        for name in ("metric", "baseline", "candidate", "change"):
            table.add_column(name, justify="left" if name == "metric" else "right")
        rows = zip(_rows(self.baseline), _rows(self.candidate), self._changes(), strict=True)
        for (name, base), (_, cand), change in rows:
            table.add_row(name, base, cand, change)
        return table


def _rows(r: ProfileReport) -> list[tuple[str, str]]:
    lat = r.latency
    return [
        ("parameters", f"{_si(r.params)} ({_si(r.params_nonzero)} non-zero)"),
        ("MACs (1 sample)", _si(r.macs) if r.macs is not None else f"n/a: {r.macs_note}"),
        ("size on disk", _bytes(r.size_bytes)),
        ("peak RAM", "not measured" if r.peak_ram_bytes is None else _bytes(r.peak_ram_bytes)),
        (
            f"latency p50 (batch {r.latency_batch})",
            f"{lat.p50_ms:.3g} ms (p90 {lat.p90_ms:.3g}, p99 {lat.p99_ms:.3g}; {lat.runs} runs)",
        ),
        (f"throughput (batch {r.throughput_batch})", f"{r.throughput:,.0f} samples/s"),
        ("accuracy", "-" if r.accuracy is None else f"{100 * r.accuracy:.2f} %"),
        ("energy", _energy(r.energy)),
    ]


def _energy(e: EnergyReading) -> str:
    if not e.available or e.joules_per_sample is None:
        return f"n/a: {e.reason}"
    return f"{1e3 * e.joules_per_sample:.3g} mJ/sample"


def _ratio(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or not baseline:
        return None
    return candidate / baseline


def _times(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.3g}x"


def _speedup(ratio: float) -> str:
    return f"{ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}"


def _si(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
