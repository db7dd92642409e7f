"""The ``compile`` recipe step: the fastest faithful backend, and the model as a .pt2 program."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimkit.cli import main
from slimkit.data import DataConfig, load_dataset
from slimkit.recipe import load_recipe, run_recipe

RECIPE = """\
name: compiled
model: fmnist_tiny
data: {name: fashion-mnist, train_subset: 512, test_subset: 256}
profile: {threads: 1, memory: false, energy: false, max_seconds: 0.05, min_runs: 3, warmup: 1}
steps:
  - train: {epochs: 1, threads: 1}
  - compile:
      candidates: [torch-eager, onnxruntime]
      batch_sizes: [1, 8]
      max_seconds: 0.1
      check_samples: 256
"""


def test_compile_step_picks_a_backend_and_writes_the_program(tmp_path: Path) -> None:
    run = run_recipe(load_recipe(RECIPE), tmp_path / "run", progress=False)
    info = run.report["stages"][2]["info"]
    assert info["backend"] in ("torch-eager", "onnxruntime")
    program = Path(info["exported_program"])
    assert program == tmp_path / "run" / "steps" / "02-compile" / "compiled" / "model.pt2"
    loaded = torch.export.load(program).module()  # our own file, just written
    images = load_dataset(DataConfig(name="fashion-mnist", test_subset=256)).test_inputs[:5]
    with torch.no_grad():
        assert (loaded(images) - run.model(images)).abs().max() < 1e-5


def test_cli_compile_reports_the_table_and_writes_the_program(tmp_path: Path, capsys) -> None:
    args = ["compile", "--model", "fmnist_tiny", "--candidates", "torch-eager,onnxruntime",
            "--seconds", "0.1", "--check-samples", "256", "--out", str(tmp_path),
            "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {row["backend"] for row in out["backends"]} == {"torch-eager", "onnxruntime"}
    assert out["exported_program"] == str(tmp_path / "model.pt2")
    program = torch.export.load(tmp_path / "model.pt2").module()
    assert program(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
