"""The ``compile`` recipe step: the fastest faithful backend, and the model as a .pt2 program."""

from __future__ import annotations

from pathlib import Path

import torch

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
