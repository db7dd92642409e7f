"""The ``decompose`` recipe step runs in a recipe and reports each layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimkit.recipe import load_recipe, run_recipe
from slimkit.serialize import load_model

RECIPE = """
name: decompose
model: fmnist_tiny
data: {name: fashion-mnist, train_subset: 256, test_subset: 128}
profile: {threads: 1, memory: false, energy: false, max_seconds: 0.05, min_runs: 3, warmup: 1}
steps:
  - decompose: {method: tucker2, layer_macs_ratio: 0.3, speed_gate: false,
                calibration_samples: 64}
"""


@pytest.mark.slow  # about 15 s: the runner profiles, plots and saves every stage
def test_decompose_step_in_a_recipe(tmp_path: Path) -> None:
    result = run_recipe(load_recipe(RECIPE), tmp_path / "out", progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    info = report["stages"][-1]["info"]
    rows = {r["layer"]: r for r in info["layers"]}
    assert rows["6"]["kept"] and rows["6"]["method"] == "tucker2"
    assert rows["6"]["activation_error"] is not None  # calibrated on the recipe's data
    assert info["macs_after"] < info["macs_before"]
    again = load_model(tmp_path / "out" / "model")
    assert type(again[6]).__name__ == "Sequential"
    assert result is not None
