"""Unstructured pruning, its statistics, its sparse storage and its recipe step, on real models."""

from __future__ import annotations

import doctest
import importlib
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from slimkit.data import DataSplits
from slimkit.errors import ConfigError, SerializationError
from slimkit.models import create_model
from slimkit.prune import (
    UnstructuredConfig,
    cubic_sparsity,
    load_sparse,
    load_sparse_state,
    prunable_layers,
    save_sparse,
    sparsify,
    sparsity_stats,
)
from slimkit.recipe import load_recipe, run_recipe
from slimkit.serialize import load_model, save_weights
from slimkit.train import TrainConfig, train

RESNET_PRUNED = [
    "stages.0.0.conv1",
    "stages.0.0.conv2",
    "stages.0.0.shortcut.0",
    "stages.1.0.conv1",
    "stages.1.0.conv2",
    "stages.1.0.shortcut.0",
    "stages.2.0.conv1",
    "stages.2.0.conv2",
    "stages.2.0.shortcut.0",
]
X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("fmnist_resnet").eval()


def weights(model: torch.nn.Module, names: list[str]) -> list[torch.Tensor]:
    return [model.get_submodule(n).weight.detach() for n in names]


@pytest.fixture(scope="module")
def trained_cnn(fmnist_small: DataSplits) -> torch.nn.Module:
    """A small convnet trained on 2,000 real images (about 75 % test accuracy)."""
    torch.manual_seed(0)
    model = create_model("fmnist_cnn", channels=[16, 32], hidden=128)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=32, threads=1)
    return train(model, config, fmnist_small).model


# --- which layers, how many zeros ------------------------------------------------------------


def test_default_layers_skip_the_stem_and_the_classifier(resnet) -> None:
    assert prunable_layers(resnet, UnstructuredConfig()) == RESNET_PRUNED
    every = prunable_layers(resnet, UnstructuredConfig(skip_first=False, skip_last=False))
    assert every == ["stem.0", *RESNET_PRUNED, "fc"]
    only_linear = UnstructuredConfig(layer_types=("linear",), skip_first=False, skip_last=False)
    assert prunable_layers(resnet, only_linear) == ["fc"]
    ignored = UnstructuredConfig(ignore=("stages.2", "*.shortcut.0"))
    assert prunable_layers(resnet, ignored) == [
        "stages.0.0.conv1",
        "stages.0.0.conv2",
        "stages.1.0.conv1",
        "stages.1.0.conv2",
    ]


def test_global_sparsity_is_exact_and_takes_the_smallest_magnitudes(resnet) -> None:
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.8))
    pruned = weights(sparse, RESNET_PRUNED)
    total = sum(w.numel() for w in pruned)
    zeros = sum(int((w == 0).sum()) for w in pruned)
    assert zeros == round(0.8 * total)
    # One threshold for all layers: no pruned weight was larger than a kept one.
    originals = torch.cat([w.abs().flatten() for w in weights(resnet, RESNET_PRUNED)])
    kept = torch.cat([w.flatten() != 0 for w in pruned])
    assert originals[~kept].max() <= originals[kept].min()
    # Global ranking gives the layers different sparsities.
    per_layer = [float((w == 0).float().mean()) for w in pruned]
    assert max(per_layer) - min(per_layer) > 0.05
    # The input model is untouched; the skipped layers and the norms are untouched too.
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())
    for name in ("stem.0.weight", "fc.weight", "fc.bias", "stem.1.weight"):
        assert torch.equal(sparse.state_dict()[name], before[name])


def test_local_scope_gives_every_layer_the_exact_sparsity(resnet) -> None:
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.6, scope="local"))
    stats = sparsity_stats(sparse, RESNET_PRUNED)
    for layer in stats.layers:
        assert layer.zeros == round(0.6 * layer.numel), layer.name
    pairs = zip(weights(resnet, RESNET_PRUNED), weights(sparse, RESNET_PRUNED), strict=True)
    for original, w in pairs:
        assert original[w == 0].abs().max() <= original[w != 0].abs().min()


def test_two_four_pattern_keeps_two_of_every_four_input_channels(resnet) -> None:
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.5, pattern="2:4"))
    for w in weights(sparse, RESNET_PRUNED):
        groups = (w != 0).movedim(1, -1).reshape(-1, 4)
        assert torch.all(groups.sum(dim=1) == 2)
    assert sparsity_stats(sparse, RESNET_PRUNED).sparsity == 0.5
    # The stem has one input channel: 2:4 cannot apply, and the error says what to do.
    with pytest.raises(ConfigError, match=r"stem\.0 has 1 input channels.*ignore"):
        sparsify(resnet, UnstructuredConfig(pattern="2:4", skip_first=False))


def test_sparsity_stats_count_layers_and_the_whole_model(resnet) -> None:
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.8, scope="local"))
    stats = sparsity_stats(sparse)
    assert [la.name for la in stats.layers] == ["stem.0", *RESNET_PRUNED, "fc"]
    assert stats.layers[0].sparsity == 0.0 and stats.layers[-1].sparsity == 0.0
    assert stats.layers[1].shape == (32, 16, 3, 3) and stats.layers[1].kind == "Conv2d"
    assert stats.params == sum(p.numel() for p in resnet.parameters())
    assert stats.zeros == sum(int((p == 0).sum()) for p in sparse.parameters())
    assert 0.75 < stats.model_sparsity < stats.sparsity < 0.8
    row = stats.rows()[1]
    assert row == {"layer": "stages.0.0.conv1", "type": "Conv2d", "shape": "32x16x3x3",
                   "params": 4608, "zeros": 3686, "sparsity": 0.7999}  # fmt: skip


# --- the result is a plain module ------------------------------------------------------------


def assert_plain(original: torch.nn.Module, sparse: torch.nn.Module) -> None:
    assert sparse is not original
    assert list(sparse.state_dict()) == list(original.state_dict())
    for (name, m), (_, o) in zip(sparse.named_modules(), original.named_modules(), strict=True):
        assert type(m) is type(o), name
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), name
        assert not torch.nn.utils.parametrize.is_parametrized(m), name
        assert set(vars(m)) == set(vars(o)), name  # no mask or extra attribute left behind
    assert not any(isinstance(p, torch.nn.Parameter) and p.is_sparse for p in sparse.parameters())


def test_zeros_are_folded_into_plain_weights(resnet) -> None:
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.8))
    assert_plain(resnet, sparse)
    assert sparse.slimkit_spec == resnet.slimkit_spec  # still saveable as data
    with torch.no_grad():
        assert sparse(X).shape == (4, 10)


def test_one_shot_fine_tuning_keeps_the_pruned_weights_at_zero(
    trained_cnn: torch.nn.Module, fmnist_small: DataSplits
) -> None:
    model = trained_cnn
    tune = TrainConfig(epochs=1, batch_size=64, lr=0.02, threads=1)
    pruned_only = sparsify(model, UnstructuredConfig(sparsity=0.9))
    history: list[dict[str, float]] = []
    config = UnstructuredConfig(sparsity=0.9, finetune=tune)
    tuned = sparsify(model, config, fmnist_small, history=history)
    assert_plain(model, tuned)
    layers = prunable_layers(model, UnstructuredConfig())
    for a, b in zip(weights(pruned_only, layers), weights(tuned, layers), strict=True):
        assert torch.equal(a == 0, b == 0)  # the same zeros: none grew back during training
        assert not torch.equal(a, b)  # and the kept weights did train
    assert [h["sparsity"] for h in history] == [pytest.approx(0.9, abs=1e-4)]
    assert history[0]["test_accuracy"] > 0.6


# --- the gradual schedule ----------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 10, 25, 50, 77, 99, 100, 150])
def test_cubic_schedule_follows_zhu_and_gupta(step: int) -> None:
    s_i, s_f, t0, t1 = 0.1, 0.9, 10, 100
    expected = s_f + (s_i - s_f) * (1 - (min(max(step, t0), t1) - t0) / (t1 - t0)) ** 3
    assert cubic_sparsity(step, s_f, s_i, t0, t1) == pytest.approx(expected, abs=1e-12)


def test_cubic_schedule_ramps_during_fine_tuning(
    trained_cnn: torch.nn.Module, fmnist_small: DataSplits
) -> None:
    model = trained_cnn
    tune = TrainConfig(epochs=3, batch_size=128, lr=0.02, threads=1)
    config = UnstructuredConfig(
        sparsity=0.9, schedule="cubic", ramp_end=0.5, update_every=2, finetune=tune
    )
    history: list[dict[str, float]] = []
    sparse = sparsify(model, config, fmnist_small, history=history)
    steps = len(fmnist_small.train_loader(128))
    total, end = 3 * steps, round(0.5 * 3 * steps)
    # The masks change every 2nd step: an epoch ends at the sparsity of the last update.
    last_update = [min(end, e * steps - (e * steps) % 2) for e in (1, 2, 3)]
    expected = [cubic_sparsity(t, 0.9, 0.0, 0, end) for t in last_update]
    assert [h["sparsity"] for h in history] == pytest.approx(expected, abs=1e-4)
    assert expected[0] > 0.75 and expected[1:] == [0.9, 0.9] and end < total
    layers = prunable_layers(model, config)
    assert sparsity_stats(sparse, layers).zeros == round(
        0.9 * sum(w.numel() for w in weights(model, layers))
    )
    assert history[-1]["test_accuracy"] > 0.6
    assert_plain(model, sparse)


def test_training_loop_calls_after_step_once_per_optimizer_step(fmnist_small) -> None:
    seen: list[int] = []

    def after_step(model: torch.nn.Module, step: int) -> None:
        assert not torch.is_grad_enabled()
        seen.append(step)

    cfg = TrainConfig(epochs=2, batch_size=256, threads=1)
    train(create_model("fmnist_tiny"), cfg, fmnist_small, after_step=after_step)
    assert seen == list(range(1, 2 * len(fmnist_small.train_loader(256)) + 1))


# --- storage -----------------------------------------------------------------------------------


def test_sparse_file_reloads_exactly_and_is_small(resnet, tmp_path: Path) -> None:
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.8))
    sparse.stages[0][0].bn1.running_mean.uniform_()  # buffers travel too
    path = save_sparse(sparse, tmp_path / "sparse.safetensors")
    dense = save_weights(sparse, tmp_path / "dense.safetensors", sparse=False)
    ratio = path.stat().st_size / dense.stat().st_size
    assert ratio <= 0.35  # the bar, on the real model
    torch.manual_seed(1)
    again = load_sparse(path, create_model("fmnist_resnet")).eval()
    for (k, a), b in zip(sparse.state_dict().items(), again.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(sparse.eval()(X), again(X))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    # Half-precision values: smaller again, close but no longer exact.
    half = save_sparse(sparse, tmp_path / "half.safetensors", values_dtype=torch.float16)
    assert half.stat().st_size < 0.7 * path.stat().st_size
    rounded = load_sparse_state(half)["stages.2.0.conv2.weight"]
    original = sparse.stages[2][0].conv2.weight.detach()
    assert rounded.dtype == torch.float32 and torch.equal(rounded == 0, original == 0)
    assert torch.allclose(rounded, original, rtol=1e-3, atol=1e-6)


def test_storage_keeps_dense_tensors_as_is_and_tied_weights_once(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50))
    model[1].weight = model[0].weight  # tied, as in language models
    with torch.no_grad():
        model[0].weight[:40] = 0.0
    path = save_sparse(model, tmp_path / "tied.safetensors")
    state = load_sparse_state(path)
    assert torch.equal(state["0.weight"], model[0].weight)
    assert torch.equal(state["1.bias"], model[1].bias)
    meta = json.loads(_metadata(path)["aliases"])
    assert meta == {"1.weight": "0.weight"}
    assert set(json.loads(_metadata(path)["sparse"])) == {"0.weight"}  # the bias stays dense
    # A plain safetensors file reads as all-dense.
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.arange(6.0).view(2, 3)}, str(plain))
    assert torch.equal(load_sparse_state(plain)["w"], torch.arange(6.0).view(2, 3))


def test_corrupt_or_mismatched_files_are_refused(resnet, tmp_path: Path) -> None:
    sparse = sparsify(resnet, UnstructuredConfig(sparsity=0.8))
    path = save_sparse(sparse, tmp_path / "m.safetensors")
    with pytest.raises(SerializationError, match="does not match the model's structure"):
        load_sparse(path, create_model("fmnist_resnet", widths=[16, 64, 128]))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    tensors["stages.0.0.conv1.weight::values"] = tensors["stages.0.0.conv1.weight::values"][:-1]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    with pytest.raises(SerializationError, match="non-zero positions but"):
        load_sparse_state(broken)
    with pytest.raises(SerializationError, match="does not exist"):
        load_sparse_state(tmp_path / "missing.safetensors")


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


# --- bad configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sparsity": 1.0}, "1.0 would zero every pruned weight"),
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"schedule": "cubic"}, "give finetune"),
        ({"pattern": "2:4", "sparsity": 0.8}, "use sparsity 0.5"),
        ({"scope": "per-layer"}, "scope"),
        ({"layer_types": []}, "layer_types"),
        ({"schedule": "cubic", "finetune": {}, "ramp_start": 0.8, "ramp_end": 0.5}, "ramp_start"),
        ({"sparsity": 0.5, "unknown": 1}, "unknown"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UnstructuredConfig.parse(fields)
    with pytest.raises(ValidationError):
        UnstructuredConfig(**fields)


def test_unknown_module_names_and_missing_data_are_clear_errors(resnet) -> None:
    with pytest.raises(ConfigError, match=r"'stages\.9'.*did you mean 'stages\.\d'"):
        sparsify(resnet, UnstructuredConfig(ignore=("stages.9",)))
    with pytest.raises(ConfigError, match="no layer left to prune"):
        sparsify(resnet, UnstructuredConfig(ignore=("stages",)))
    with pytest.raises(ConfigError, match="needs data="):
        sparsify(resnet, UnstructuredConfig(finetune=TrainConfig(epochs=1)))


# --- the recipe step ---------------------------------------------------------------------------

RECIPE = """\
name: sparse
model: fmnist_tiny
data: {name: fashion-mnist, train_subset: 512, test_subset: 256}
profile: {threads: 1, memory: false, energy: false, max_seconds: 0.05, min_runs: 3, warmup: 1}
steps:
  - sparsify:
      sparsity: 0.7
      scope: local
      schedule: cubic
      update_every: 1
      finetune: {epochs: 1, batch_size: 64, threads: 1}
"""


def test_recipe_step_reports_sparsity_and_sizes(tmp_path: Path) -> None:
    run = run_recipe(load_recipe(RECIPE), tmp_path / "run", progress=False)
    stage = run.report["stages"][1]
    info = stage["info"]
    assert stage["name"] == "sparsify" and stage["config"]["sparsity"] == 0.7
    assert [row["layer"] for row in info["layers"]] == ["0", "3", "6", "11"]
    assert [row["pruned"] for row in info["layers"]] == [False, True, True, False]
    for row in info["layers"][1:3]:
        assert row["zeros"] == round(0.7 * row["params"])
    assert info["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert 0 < info["model_sparsity"] < info["sparsity"]
    step_dir = run.out_dir / "steps" / "01-sparsify"
    sparse_file = step_dir / "model.safetensors"  # the runner's copy is stored sparse
    assert info["sparse_bytes"] == sparse_file.stat().st_size
    assert info["size_ratio"] == pytest.approx(info["sparse_bytes"] / info["dense_bytes"], abs=1e-4)
    assert info["size_ratio"] < 0.6
    assert [h["sparsity"] for h in info["history"]] == [pytest.approx(0.7, abs=1e-3)]
    # load_model (structure + sparse weights) and load_sparse read the same weights.
    saved = load_model(step_dir)
    again = load_sparse(sparse_file, create_model("fmnist_tiny"))
    for a, b in zip(saved.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert stage["profile"]["params_nonzero"] < stage["profile"]["params"]
    markdown = (run.out_dir / "report.md").read_text()
    assert "size_ratio" in markdown and "| layer | type | shape |" in markdown


@pytest.mark.parametrize(
    "name", ["slimkit.prune._unstructured", "slimkit._storage", "slimkit.prune._sparse_step"]
)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
