"""The ``distill`` recipe step: the model before compression as the default teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimkit.errors import ConfigError, RecipeError
from slimkit.models import create_model
from slimkit.recipe import load_recipe, run_recipe
from slimkit.serialize import save_model

HEAD = """\
model: fmnist_tiny
data: {name: fashion-mnist, train_subset: 512, test_subset: 256}
profile: {threads: 1, memory: false, energy: false, max_seconds: 0.05, min_runs: 3, warmup: 1}
steps:
"""
TRAIN = "  - train: {epochs: 1, batch_size: 64, augment: false, threads: 1}\n"
DISTILL = "  - distill: {temperature: 2.0, train: {epochs: 1, batch_size: 64, augment: false, threads: 1}}\n"  # noqa: E501


@pytest.mark.slow
def test_distill_after_prune_learns_from_the_model_before_it(tmp_path: Path) -> None:
    prune = "  - prune: {keep: 0.5, scope: local}\n"
    run = run_recipe(load_recipe(HEAD + TRAIN + prune + DISTILL), tmp_path / "run", progress=False)
    stages = run.report["stages"]
    assert [s["name"] for s in stages] == ["baseline", "train", "prune", "distill"]
    info = stages[3]["info"]
    assert info["teacher"] == "the model before step 2 (prune)"
    teacher_params = sum(p.numel() for p in create_model("fmnist_tiny").parameters())
    assert info["teacher_params"] == teacher_params
    assert info["processes"] == 1 and len(info["history"]) == 1
    # The distilled model is the pruned one, retrained: same (smaller) shape, saved as usual.
    pruned_params = stages[2]["profile"]["params"]
    assert stages[3]["profile"]["params"] == pruned_params < info["teacher_params"]
    assert (run.out_dir / "steps/03-distill/model.json").is_file()


def test_without_a_compression_step_a_teacher_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no teacher.*Add `teacher: FOLDER`"):
        run_recipe(load_recipe(HEAD + DISTILL), tmp_path / "a", progress=False)
    folder = save_model(create_model("fmnist_tiny"), tmp_path / "teacher")
    with_teacher = DISTILL.replace("{temperature", f"{{teacher: {folder}, temperature")
    run = run_recipe(load_recipe(HEAD + with_teacher), tmp_path / "b", progress=False)
    assert run.report["stages"][1]["info"]["teacher"] == str(folder)


def test_a_teacher_folder_that_is_no_saved_model_fails_validation(tmp_path: Path) -> None:
    bad = DISTILL.replace("{temperature", f"{{teacher: {tmp_path}, temperature")
    with pytest.raises(RecipeError, match=r"no model\.json"):
        load_recipe(HEAD + bad)
