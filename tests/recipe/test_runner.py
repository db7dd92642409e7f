"""The runner end to end, on real Fashion-MNIST images, writing a real output folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from slimkit.config import Config
from slimkit.data import DataSplits
from slimkit.models import create_model
from slimkit.recipe import (
    RunResult,
    StepOutput,
    _steps,
    load_recipe,
    register_step,
    run_recipe,
)
from slimkit.serialize import load_model, save_model

# Small and quick: 512 training and 256 test images, a short timing budget, one thread.
DATA = "data: {name: fashion-mnist, train_subset: 512, test_subset: 256}\n"
PROFILE = (
    "profile: {threads: 1, memory: false, energy: false, max_seconds: 0.1, min_runs: 3, "
    "warmup: 1}\n"
)
RECIPE = f"name: tiny\nmodel: fmnist_tiny\n{DATA}{PROFILE}steps:\n  - train: {{epochs: 1}}\n"
OUTPUTS = (
    "recipe.yaml",
    "report.json",
    "report.md",
    "env.json",
    "accuracy_vs_latency.png",
    "accuracy_vs_size.png",
    "model/model.safetensors",
    "model/model.json",
    "steps/01-train/model.safetensors",
    "steps/01-train/model.json",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return run_recipe(load_recipe(RECIPE), tmp_path_factory.mktemp("run") / "out", progress=False)


def test_run_writes_every_output(run: RunResult) -> None:
    for name in OUTPUTS:
        path = run.out_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    for plot in ("accuracy_vs_latency.png", "accuracy_vs_size.png"):
        assert (run.out_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No temporary file of an atomic write is left behind.
    assert not [p for p in run.out_dir.rglob("*.tmp")]


def test_report_json_has_baseline_and_step(run: RunResult) -> None:
    report = json.loads((run.out_dir / "report.json").read_text())
    assert report == run.report
    assert report["status"] == "complete"
    assert [(s["name"], s["index"]) for s in report["stages"]] == [("baseline", 0), ("train", 1)]
    baseline, trained = report["stages"]
    for stage in (baseline, trained):
        profile = stage["profile"]
        assert profile["params"] == 24058 and profile["macs"] > 0 and profile["size_bytes"] > 0
        assert profile["latency"]["p50_ms"] > 0 and profile["throughput"] > 0
        assert 0.0 <= profile["accuracy"] <= 1.0
        assert profile["threads"] == 1
    assert baseline["config"] is None and trained["config"]["epochs"] == 1
    assert trained["seconds"] > 0
    [epoch] = trained["info"]["history"]
    # The step's own evaluation and the profile measure the same model on the same 256 images.
    assert epoch["test_accuracy"] == pytest.approx(trained["profile"]["accuracy"])
    assert report["recipe"]["steps"] == [{"train": trained["config"]}]
    assert report["env"]["torch"] == torch.__version__


def test_report_markdown_has_table_and_history(run: RunResult) -> None:
    text = (run.out_dir / "report.md").read_text()
    assert text.startswith("# slimkit report: tiny")
    assert "| # | stage | time | params | MACs | size | p50 latency |" in text
    assert "| 0 | baseline | 0.0 s | 24.1k | 1.92M |" in text
    assert "| 1 | train |" in text
    assert "| epoch | train_loss | test_accuracy |" in text
    assert "![accuracy vs p50 latency](accuracy_vs_latency.png)" in text
    assert "Status: **complete**" in text


def test_saved_recipe_reloads_equal(run: RunResult) -> None:
    assert load_recipe(run.out_dir / "recipe.yaml") == load_recipe(RECIPE)


def test_saved_models_give_the_same_outputs(run: RunResult, fmnist_small: DataSplits) -> None:
    # The recipe's 256 test images are the first 256 of the shared fixture's.
    images, labels = fmnist_small.test_inputs[:256], fmnist_small.test_labels[:256]
    run.model.eval()
    with torch.inference_mode():
        expected = run.model(images)
        for folder in ("model", "steps/01-train"):
            got = load_model(run.out_dir / folder)(images)
            assert (got - expected).abs().max().item() < 1e-6, folder
    accuracy = (expected.argmax(1) == labels).float().mean().item()
    assert run.stages[-1].profile["accuracy"] == pytest.approx(accuracy)


class _NoConfig(Config):
    pass


@pytest.fixture
def throwaway_steps() -> Iterator[dict[str, object]]:
    """Register test-only steps, and remove them afterwards; yields what ``boom_test`` saw."""
    seen: dict[str, object] = {}

    @register_step("boom_test", _NoConfig)
    def boom(model, config, ctx):
        # What a run killed at this moment would leave on disk.
        seen["report"] = json.loads((ctx.step_dir.parents[1] / "report.json").read_text())
        raise RuntimeError("boom half-way")

    @register_step("probe_test", _NoConfig)
    def probe(model, config, ctx):
        earlier = [(name, _nonzero(m)) for name, m in ctx.models_before]
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # in place: the runner must have handed over a copy
        return StepOutput(model, {"earlier": earlier, "step_dir": ctx.step_dir.name})

    yield seen
    for name in ("boom_test", "probe_test"):
        _steps._STEPS.pop(name)


def _nonzero(model: torch.nn.Module) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def _recipe(*steps: str, model: str = "fmnist_tiny") -> str:
    lines = "".join(f"  - {s}\n" for s in steps)
    return f"model: {model}\n{DATA}{PROFILE}steps:\n{lines}"


def test_failing_step_leaves_earlier_outputs_valid(
    tmp_path: Path, throwaway_steps: dict[str, object]
) -> None:
    start = save_model(create_model("fmnist_tiny"), tmp_path / "start")  # a saved starting model
    recipe = _recipe("train: {epochs: 0}", "boom_test:", model=f"{{path: {start}}}")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom half-way"):
        run_recipe(load_recipe(recipe), out, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    assert report["error"] == "in step 2 (boom_test): RuntimeError: boom half-way"
    assert [s["name"] for s in report["stages"]] == ["baseline", "train"]
    # Already before the failure, the report on disk held every finished stage.
    assert throwaway_steps["report"]["status"] == "running"
    assert throwaway_steps["report"]["stages"] == report["stages"]
    assert "Status: **failed**, 1 of 2 step(s) done" in (out / "report.md").read_text()
    load_model(out / "steps/01-train")  # the finished step's model is complete and loadable
    assert not (out / "model").exists()  # no final model: the run did not finish
    assert load_recipe(out / "recipe.yaml").steps[1].name == "boom_test"


def test_steps_see_earlier_models_and_get_a_copy(
    tmp_path: Path, throwaway_steps: dict[str, object]
) -> None:
    recipe = _recipe("train: {epochs: 0}", "probe_test:", "probe_test:")
    result = run_recipe(load_recipe(recipe), tmp_path, progress=False)
    trained = result.stages[1].profile["params_nonzero"]
    assert trained > 0
    assert result.stages[2].info["step_dir"] == "02-probe_test"
    assert [name for name, _ in result.stages[2].info["earlier"]] == ["train"]
    # The first probe zeroed the model it was given in place; the model kept as "before
    # probe_test" (the trained one) must be intact.
    assert result.stages[3].info["earlier"][1] == ["probe_test", trained]
    assert result.stages[2].profile["params_nonzero"] == 0


def test_refuses_to_mix_runs_in_one_folder(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_recipe(load_recipe(RECIPE), tmp_path, progress=False)
    assert (tmp_path / "report.json").read_text() == "{}"
