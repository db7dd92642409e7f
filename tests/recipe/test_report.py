"""The report's Markdown and plots, rendered from report data alone (no model, no run)."""

from __future__ import annotations

import json
from pathlib import Path

from slimkit.recipe._report import Stage, build_report, jsonable, render_markdown, write_plots


def _profile(p50: float | None, size: int, accuracy: float | None) -> dict[str, object]:
    latency = None if p50 is None else {"p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "runs": 5}
    return {
        "runner": "torch-eager", "threads": 1, "params": 1000, "params_nonzero": 1000,
        "macs": None, "size_bytes": size, "latency": latency, "latency_batch": 1,
        "throughput": 500.0, "throughput_batch": 64, "accuracy": accuracy,
    }  # fmt: skip


def _report() -> dict[str, object]:
    stages = [
        Stage("baseline", 0, None, 0.0, _profile(2.0, 4_000_000, 0.90)),
        Stage("shrink", 1, {"keep": 0.5}, 1.5, _profile(1.0, 1_000_000, 0.89), {"note": "ok"}),
        Stage("export", 2, {}, 0.1, _profile(None, 1_000_000, None)),
    ]
    recipe = {"name": "r", "steps": [{"shrink": {"keep": 0.5}}, {"export": {}}, {"more": {}}]}
    return build_report(recipe, stages, {"cpu": {"flags": {"avx2": True}}}, "failed", "boom")


def test_markdown_ratios_and_missing_measures() -> None:
    text = render_markdown(_report())
    assert "Status: **failed**, 2 of 3 step(s) done." in text and "Error: `boom`" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 | shrink |"))
    # size 0.25x, speed-up 2x (baseline time / stage time), accuracy down one point
    assert "| 1 MB |" in row and "| 0.25× |" in row and "| 2.00× |" in row
    assert row.endswith("| -1.00 pp |")
    row = next(line for line in text.splitlines() if line.startswith("| 2 | export |"))
    assert row.count("—") == 6  # MACs, p50, accuracy, MACs ratio, speed-up, Δ accuracy
    assert "- note: ok" in text and "`keep=0.5`" in text


def test_plots_skip_stages_without_the_measure(tmp_path: Path) -> None:
    paths = write_plots(_report(), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_latency.png", "accuracy_vs_size.png"]
    for path in paths:
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]


def test_report_is_strict_json() -> None:
    data = jsonable({"loss": float("nan"), "where": Path("x"), "big": float("inf")})
    assert data == {"loss": None, "where": "x", "big": None}
    json.loads(json.dumps(_report()), parse_constant=lambda c: 1 / 0)
