"""Latency of candidates at batch 1: measured end to end, or summed from a per-operation table.

The table times every distinct operation (the stem, each block with its type, widths, kernel,
expansion, stride and input resolution, the classifier) once on this machine and caches the
times in ``~/.cache/slimkit/latency/``, keyed by the CPU model (from :mod:`slimkit.env`), the
torch version and the thread count; a candidate's latency is then the sum of its operations'
times, without building or timing it. Two processes sharing the table merge their entries.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._io import write_json
from slimkit._runtime import num_threads
from slimkit.env import collect_env
from slimkit.measure._latency import time_interleaved
from slimkit.models._searched import BlockArch, ConvBN, FmnistArch, build_block

__all__ = ["LatencyTable", "measure_latency"]


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...] = (1, 28, 28), *, threads: int = 1,
    seconds: float = 0.3, min_runs: int = 20, warmup: int = 5,
) -> float:  # fmt: skip
    """Median time of one batch-1 forward pass of ``model`` in milliseconds, ``threads`` threads.

    Example:
        >>> from slimkit.models import create_model
        >>> measure_latency(create_model("fmnist_tiny"), seconds=0.01, min_runs=3) > 0
        True
    """
    was_training = model.training
    model.eval()
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with num_threads(threads), torch.inference_mode():
            [timing] = time_interleaved(
                [model], x, warmup=warmup, min_runs=min_runs, max_seconds=seconds
            )
    finally:
        model.train(was_training)
    return timing.stats.p50_ms


class _Head(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class LatencyTable:
    """Per-operation batch-1 latencies of ``fmnist_searched`` architectures, cached per machine.

    Args:
        path: The cache file; default ``~/.cache/slimkit/latency/<cpu>-torch<v>-t<threads>.json``
            (``$XDG_CACHE_HOME`` is honoured).
        threads: Torch threads of the timings.
        seconds: Timing budget per operation.
        min_runs: Timed runs per operation, at least.
        input_shape: One input sample's shape.
        num_classes: Outputs of the classifier.

    Example:
        >>> import tempfile
        >>> table = LatencyTable(Path(tempfile.mkdtemp()) / "t.json", seconds=0.005, min_runs=3)
        >>> arch = {"stem": 8, "stages": [{"width": 16, "blocks": [{"type": "plain"}]}]}
        >>> table.predict(arch) > 0 and len(table.entries) == 3
        True
    """

    def __init__(
        self, path: str | Path | None = None, *, threads: int = 1, seconds: float = 0.05,
        min_runs: int = 20, input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10,
    ) -> None:  # fmt: skip
        self.threads, self.seconds, self.min_runs = threads, seconds, min_runs
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.path = Path(path) if path is not None else default_table_path(threads)
        self.entries: dict[str, float] = {}
        self._load()

    def predict(self, arch: dict[str, Any] | FmnistArch) -> float:
        """The architecture's latency in ms: the sum of its operations' (timed when missing)."""
        total, added = 0.0, False
        for key, build, shape in self.operations(FmnistArch.parse(arch)):
            if key not in self.entries:
                self.entries[key] = self._time(build(), shape)
                added = True
            total += self.entries[key]
        if added:
            self.save()
        return total

    def operations(self, arch: FmnistArch) -> Iterator[tuple[str, Any, tuple[int, ...]]]:
        """``(key, module builder, input shape)`` of each operation of ``arch``."""
        in_ch, res = self.input_shape[0], self.input_shape[-1]
        yield (f"stem|{in_ch}>{arch.stem}|k3|r{res}",
               lambda: ConvBN(in_ch, arch.stem, 3), (1, in_ch, res, res))  # fmt: skip
        prev = arch.stem
        for stage in arch.stages:
            for b, block in enumerate(stage.blocks):
                stride = stage.stride if b == 0 else 1
                key = (f"{block.type}|{prev}>{stage.width}|k{block.kernel}|e{block.expand}"
                       f"|s{stride}|skip{int(block.skip)}|r{res}")  # fmt: skip
                yield key, _block_builder(block, prev, stage.width, stride), (1, prev, res, res)
                res = (res - 1) // stride + 1
                prev = stage.width
        classes = self.num_classes
        yield (f"head|{prev}>{classes}|r{res}",
               lambda: _Head(prev, classes), (1, prev, res, res))  # fmt: skip

    def _time(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        return measure_latency(
            module, shape[1:], threads=self.threads, seconds=self.seconds,
            min_runs=self.min_runs, warmup=3,
        )  # fmt: skip

    def _load(self) -> None:
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries.update({k: float(v) for k, v in data.get("entries", {}).items()})
            except (json.JSONDecodeError, OSError, AttributeError, ValueError):
                pass  # a damaged cache is rebuilt

    def save(self) -> Path:
        """Write the table, merged with entries another process added meanwhile."""
        mine = dict(self.entries)
        self.entries = {}
        self._load()
        self.entries.update(mine)
        env = collect_env()
        write_json(self.path, {
            "cpu": env["cpu"]["model"], "torch": torch.__version__, "threads": self.threads,
            "entries": dict(sorted(self.entries.items())),
        })  # fmt: skip
        return self.path


def _block_builder(block: BlockArch, in_ch: int, out_ch: int, stride: int) -> Any:
    return lambda: build_block(block, in_ch, out_ch, stride)


def default_table_path(threads: int = 1) -> Path:
    """``~/.cache/slimkit/latency/<cpu model>-torch<version>-t<threads>.json``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cpu = collect_env()["cpu"]["model"] or "unknown-cpu"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{cpu}-torch{torch.__version__}-t{threads}").strip("-")
    return base / "slimkit" / "latency" / f"{slug}.json"
