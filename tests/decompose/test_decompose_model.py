"""A decomposed model is plain layers: it saves without pickle, exports to ONNX, prunes; the
input model is left alone; the report and the speed gate say what happened per layer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.decompose import DecomposeConfig, decompose, decomposition_report
from slimkit.errors import ConfigError
from slimkit.serialize import load_model, save_model

ROW_FIELDS = {
    "layer",
    "kind",
    "method",
    "rank",
    "weight_error",
    "activation_error",
    "macs_ratio",
    "params_ratio",
    "speedup",
    "kept",
    "reason",
}


@pytest.fixture(scope="module")
def decomposed(resnet_one_epoch: nn.Module, fmnist_small) -> nn.Module:
    config = DecomposeConfig(target_macs=0.5, speed_gate=False, calibration_samples=128)
    return decompose(resnet_one_epoch, config, fmnist_small.example_input(1), calib=fmnist_small)


def test_result_is_plain_layers_and_the_input_is_untouched(
    resnet_one_epoch: nn.Module, decomposed: nn.Module, fmnist_small
) -> None:
    replaced = [
        m
        for m in decomposed.modules()
        if isinstance(m, nn.Sequential) and all(isinstance(c, nn.Conv2d | nn.Linear) for c in m)
    ]
    assert len(replaced) >= 3
    assert all(type(c) in (nn.Conv2d, nn.Linear) for m in replaced for c in m)
    original = dict(resnet_one_epoch.named_modules())
    assert all(
        type(m) in (nn.Conv2d, nn.Linear)
        for n, m in original.items()
        if n.endswith(("conv1", "conv2", "fc"))
    )
    x = fmnist_small.test_inputs[:256]
    with torch.no_grad():
        agree = (decomposed(x).argmax(1) == resnet_one_epoch(x).argmax(1)).float().mean()
    assert agree > 0.8  # before any fine-tuning


def test_report_lists_every_layer_with_the_facts(decomposed: nn.Module) -> None:
    report = decomposition_report(decomposed)
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    kept = [r for r in report["layers"] if r["kept"]]
    assert kept and all(set(r) >= ROW_FIELDS for r in kept)
    for row in kept:
        assert 0 < row["macs_ratio"] <= 0.6 and row["activation_error"] is not None
        assert row["reason"] == "speed gate off"
    assert {r["layer"] for r in report["layers"]} >= {"stem.0", "fc", "stages.2.0.conv2"}


def test_decomposed_model_round_trips_through_save_and_load(
    decomposed: nn.Module, fmnist_small, tmp_path: Path
) -> None:
    folder = save_model(decomposed, tmp_path / "model")
    again = load_model(folder)
    x = fmnist_small.test_inputs[:64]
    with torch.no_grad():
        assert torch.equal(decomposed.eval()(x), again(x))
    assert "pickle" not in (folder / "model.json").read_text()


@pytest.mark.parametrize(
    "exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)]
)
def test_decomposed_model_exports_to_onnx(
    decomposed: nn.Module, fmnist_small, tmp_path: Path, exporter: str
) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.compile import export_onnx

    example = fmnist_small.example_input(4)
    path = export_onnx(decomposed.eval(), example, tmp_path / "d.onnx", exporter=exporter)
    assert path.stat().st_size > 0  # export_onnx checked it against PyTorch at 1e-4


def test_decomposed_model_prunes_and_the_pruned_model_round_trips(
    decomposed: nn.Module, fmnist_small, tmp_path: Path
) -> None:
    from slimkit.prune import StructuredConfig, prune

    x = fmnist_small.example_input(1)
    pruned = prune(decomposed, StructuredConfig(keep=0.7), x)
    again = load_model(save_model(pruned, tmp_path / "pruned"))
    batch = fmnist_small.test_inputs[:32]
    with torch.no_grad():
        assert torch.equal(pruned.eval()(batch), again(batch))


def test_grouped_and_ignored_layers_are_skipped_and_recorded() -> None:
    model = nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )
    config = DecomposeConfig(method="tucker2", ignore=("4",), speed_gate=False)
    small = decompose(model, config, torch.randn(1, 16, 8, 8))
    rows = {r["layer"]: r for r in decomposition_report(small)["layers"]}
    assert "grouped" in rows["0"]["reason"] and not rows["0"]["kept"]
    assert "ignored" in rows["4"]["reason"]
    assert rows["2"]["kept"] and rows["2"]["method"] == "tucker2"
    assert isinstance(small[0], nn.Conv2d) and isinstance(small[4], nn.Linear)


def test_speed_gate_keeps_only_measured_speedups() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3))
    original = copy.deepcopy(model)
    config = DecomposeConfig(method="tucker2", gate_min_speedup=100.0, gate_seconds=0.02)
    same = decompose(model, config, torch.randn(1, 64, 16, 16))
    rows = decomposition_report(same)["layers"]
    assert not any(r["kept"] for r in rows)
    assert all(r["reason"].startswith("not faster") and r["speedup"] > 0 for r in rows)
    assert all(isinstance(same[i], nn.Conv2d) for i in (0, 2))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), original.state_dict().values(), strict=True)
    )


def test_clear_errors_before_any_work() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(ConfigError, match="example_inputs"):
        decompose(model, DecomposeConfig())
    with pytest.raises(ConfigError, match="no Conv2d or Linear layer"):
        decompose(model, DecomposeConfig(), torch.randn(1, 8, 8, 8))
    with pytest.raises(ConfigError, match=r"matching \['nope'\]"):
        decompose(model, DecomposeConfig(layers=("nope",)), torch.randn(1, 8, 8, 8))
