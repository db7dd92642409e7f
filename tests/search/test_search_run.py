"""End to end: search with real short trainings, the latency table, the recipe step, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimkit.cli import main
from slimkit.data import DataSplits
from slimkit.measure import accuracy
from slimkit.recipe import load_recipe, run_recipe
from slimkit.search import LatencyTable, SearchConfig, search, search_splits
from slimkit.search._latency import default_table_path, measure_latency
from slimkit.serialize import load_model
from slimkit.train import TrainConfig

TINY = {"stem_widths": (8,), "stage_widths": ((8, 16), (16,), (16, 24)), "depths": (1,)}
QUICK_TRAIN = TrainConfig(epochs=1, lr=0.2, augment=False, threads=1, batch_size=64)


def test_search_trains_each_candidate_and_keeps_the_best(
    fmnist_small: DataSplits, tmp_path: Path
) -> None:
    cfg = SearchConfig(
        strategy="tpe", trials=2, objectives=("accuracy", "latency_ms"), space_options=TINY,
        train_subset=1200, val_samples=256, train=QUICK_TRAIN,
    )  # fmt: skip
    table = tmp_path / "latency.json"
    from slimkit.search import CandidateEvaluator

    evaluator = CandidateEvaluator(
        cfg, search_splits(fmnist_small, cfg),
        table=LatencyTable(table, seconds=0.01, min_runs=5),
    )  # fmt: skip
    result = search(cfg, fmnist_small, evaluate=evaluator)
    assert len(result.trials) == 2 and table.is_file()
    for t in result.trials:
        assert t.metrics["latency_ms"] > 0 and t.metrics["params"] > 0 and t.metrics["macs"] > 0
    assert max(t.metrics["accuracy"] for t in result.trials) > 0.3  # chance: 0.1
    front = result.pareto_front()
    assert result.best in front
    folder = result.save(tmp_path / "out", model=False)
    assert (folder / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((folder / "trials.json").read_text())
    assert [t["number"] for t in saved["trials"]] == [0, 1]


def test_best_model_of_a_training_search_is_the_trained_one(fmnist_small: DataSplits) -> None:
    cfg = SearchConfig(strategy="random", trials=2, space_options=TINY, train_subset=512,
                       val_samples=256, train=QUICK_TRAIN)  # fmt: skip
    result = search(cfg, fmnist_small)
    split = search_splits(fmnist_small, cfg)
    model = result.model()
    assert model.slimkit_spec.kwargs["arch"] == result.best.arch
    assert accuracy(model, split.test_loader()) == pytest.approx(result.best.metrics["accuracy"])


def test_latency_table_is_cached_per_machine_and_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_table_path(1)
    assert path.parent == tmp_path / "slimkit" / "latency" and "-t1" in path.name
    arch = {
        "stem": 8,
        "stages": [
            {"width": 16, "blocks": [{"type": "residual", "kernel": 3}]},
            {"width": 24, "blocks": [{"type": "mbconv", "expand": 2}]},
        ],
    }
    table = LatencyTable(seconds=0.01, min_runs=5)
    first = table.predict(arch)
    assert path.is_file() and len(table.entries) == 4  # stem, two blocks, classifier
    again = LatencyTable(seconds=0.01, min_runs=5)  # another process: read from the cache
    assert again.entries == table.entries and again.predict(arch) == first
    from slimkit.models import create_model

    measured = measure_latency(create_model("fmnist_searched", arch=arch), seconds=0.05)
    assert 0.2 < first / measured < 5  # the sum of the parts is the whole, roughly


def test_recipe_step_search_then_train(tmp_path: Path) -> None:
    recipe = load_recipe(
        "name: s\nmodel: fmnist_tiny\n"
        "data: {name: fashion-mnist, train_subset: 600, test_subset: 256}\n"
        "profile: {threads: 1, memory: false, energy: false, max_seconds: 0.05, min_runs: 3, "
        "warmup: 1}\n"
        "steps:\n"
        "  - search: {strategy: evolution, trials: 2, population: 2, tournament: 1,\n"
        f"      space_options: {json.dumps(TINY)}, train_subset: 256, val_samples: 256,\n"
        "      train: {epochs: 1, augment: false, batch_size: 64}}\n"
        "  - train: {epochs: 1, augment: false}\n"
    )
    run = run_recipe(recipe, tmp_path / "run", progress=False)
    step = run.out_dir / "steps" / "01-search"
    assert (step / "pareto.png").is_file() and (step / "trials.json").is_file()
    report = json.loads((run.out_dir / "report.json").read_text())
    info = report["stages"][1]["info"]
    assert info["trials"] == 2 and info["pareto_plot"].endswith("pareto.png")
    final = load_model(run.out_dir / "model")
    assert final.slimkit_spec.name == "fmnist_searched"
    assert final(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cli_space_and_run(tmp_path: Path, capsys) -> None:
    config = tmp_path / "search.yaml"
    config.write_text(
        "strategy: nsga2\ntrials: 4\npopulation: 2\nobjectives: [params, macs]\n"
        "evaluator: none\nmax_params: 400000\n"
    )
    assert main(["search", "space", "--config", str(config), "--json"]) == 0
    space = json.loads(capsys.readouterr().out)
    assert space["size"] == 91_113_984_000 and "s0.type" in space["decisions"]
    assert main(["search", "run", "--config", str(config), "--out", str(tmp_path / "o")]) == 0
    assert "best of 4" in capsys.readouterr().out
    model = load_model(tmp_path / "o" / "model")
    assert sum(p.numel() for p in model.parameters()) <= 400_000
    assert main(["search", "run", "--config", str(tmp_path / "missing.yaml"),
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip


def test_cli_create_worker_status_on_a_journal(tmp_path: Path, capsys) -> None:
    config = tmp_path / "search.yaml"
    config.write_text("strategy: random\ntrials: 3\nobjectives: [params]\nevaluator: none\n")
    storage = ["--storage", str(tmp_path / "s.journal"), "--study", "cli"]
    assert main(["search", "create", "--config", str(config), *storage]) == 0
    assert "slimkit search worker" in capsys.readouterr().out
    assert main(["search", "create", "--config", str(config), *storage]) == 2  # exists
    capsys.readouterr()
    assert main(["search", "worker", *storage, "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["completed"] == 3 and report["threads"] == 1
    out = tmp_path / "result"
    assert main(["search", "status", *storage, "--json", "--out", str(out)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["progress"]["slots_done"] == 3 and status["best"]["metrics"]["params"] > 0
    assert (out / "pareto.png").is_file() and load_model(out / "model") is not None
