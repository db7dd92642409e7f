"""The ``quantize`` recipe step: int8 lowered to ONNX Runtime, measured against fp32 there."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimkit.errors import ConfigError
from slimkit.quantize._step import FP32_FILE, INT8_FILE, QuantizeStepConfig
from slimkit.recipe import load_recipe, run_recipe
from slimkit.serialize import load_model

RECIPE = """\
name: int8
model: fmnist_resnet
data: {name: fashion-mnist, train_subset: 1024, test_subset: 500}
profile: {threads: 1, memory: false, energy: false, max_seconds: 0.05, min_runs: 3, warmup: 1}
steps:
  - train: {epochs: 1, batch_size: 64, lr: 0.05, augment: false, threads: 1}
  - quantize:
      calibration_samples: 128
      eval_samples: 256
      min_agreement: 0.9
      candidates: [static-u8s8-qdq, dynamic-pc]
"""


def test_int8_step_keeps_the_fastest_faithful_format_and_measures_it_on_ort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    # A relative output folder, as `slimkit demo --out runs/demo` gives: the lowering works in
    # scratch directories and must not lose its paths.
    monkeypatch.chdir(tmp_path)
    run = run_recipe(load_recipe(RECIPE), Path("run"), progress=False)
    trained, stage = run.report["stages"][1], run.report["stages"][2]
    info = stage["info"]
    assert stage["runtime"] == "onnxruntime"
    assert "float model on onnxruntime" in stage["speedup_against"]
    rows = {row["name"]: row for row in info["int8_candidates"]["rows"]}
    assert set(rows) == {"static-u8s8-qdq", "dynamic-pc"}
    step_dir = run.out_dir / "steps" / "02-quantize"
    assert info["int8_format"] in rows and rows[info["int8_format"]]["passed"]
    int8, fp32 = step_dir / INT8_FILE, step_dir / FP32_FILE
    # Weights int8 instead of float32: about a quarter of the file (scales and graph on top).
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size
    assert stage["profile"]["size_bytes"] == int8.stat().st_size
    # The int8 session's accuracy on the real test images stays near the float model's.
    assert abs(stage["profile"]["accuracy"] - trained["profile"]["accuracy"]) < 0.03
    # The PyTorch side (fake-quantized layers) saves and reloads as data.
    again = load_model(step_dir)
    assert any(type(m).__name__ == "QuantConv2d" for m in again.modules())
    assert "onnxruntime" in (run.out_dir / "report.md").read_text()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": "bf16", "runtime": "onnxruntime"}, "int8 only"),
        ({"skip": ["stem.0"]}, "runtime: torch"),
        ({"accuracy_budget": 0.01}, "runtime: torch"),
        ({"min_agreement": 0}, "min_agreement"),
    ],
)
def test_step_config_refuses_what_the_lowering_cannot_do(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantizeStepConfig.parse(fields)


def test_float_step_stays_in_torch() -> None:
    assert QuantizeStepConfig(dtype="fp16").target_runtime == "torch"
    assert QuantizeStepConfig(skip=("stem.0",), runtime="torch").target_runtime == "torch"
