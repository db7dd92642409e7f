"""Structured pruning through the public verb, on the reference models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.measure import count_macs, count_params
from slimkit.models import create_model
from slimkit.prune import StructuredConfig, prune

X = torch.zeros(1, 1, 28, 28)


def widths(model: torch.nn.Module) -> dict[str, int]:
    return {
        name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
    }


def test_local_channel_target_halves_every_group_and_leaves_the_input_alone() -> None:
    model = create_model("fmnist_cnn")
    small = prune(model, StructuredConfig(scope="local", keep=0.5), X)
    assert widths(small) == {"0": 16, "3": 32}
    assert small[7].out_features == 512 and small[10].out_features == 10
    assert widths(model) == {"0": 32, "3": 64}  # the input model is untouched


@pytest.mark.parametrize("target", ["macs", "params"])
def test_measured_targets_are_met_without_overshooting(target: str) -> None:
    model = create_model("fmnist_resnet", widths=[16, 32, 64])
    measure = {
        "macs": lambda m: count_macs(m, X).macs,
        "params": lambda m: count_params(m)[0],
    }[target]
    small = prune(model, StructuredConfig(target=target, keep=0.5), X)
    ratio = measure(small) / measure(model)
    assert 0.35 <= ratio <= 0.5


def test_round_to_and_min_channels_are_respected() -> None:
    model = create_model("fmnist_resnet")
    small = prune(model, StructuredConfig(keep=0.3, round_to=8, min_channels=16), X)
    for name, width in widths(small).items():
        assert width % 8 == 0 and width >= 16, name


def test_ignored_modules_keep_their_channels() -> None:
    model = create_model("fmnist_resnet")
    small = prune(model, StructuredConfig(keep=0.5, ignore=("stages.2",)), X)
    assert small.stages[2][0].conv1.out_channels == 128
    assert small.stages[0][0].conv1.out_channels < 32


def test_importance_measures_rank_differently(fmnist_small) -> None:
    model = create_model("fmnist_cnn", channels=[16, 32], hidden=64)
    with torch.no_grad():
        model[0].weight[:4] *= 10  # four filters with much larger norms
    kept = {}
    for importance in ("l1", "l2", "random", "taylor", "bn_scale"):
        cfg = StructuredConfig(importance=importance, scope="local", keep=0.5)
        small = prune(model, cfg, data=fmnist_small)
        kept[importance] = small[0].weight.detach()
    # Magnitude keeps the four large filters.
    assert all(kept["l2"][:, :].abs().sum(dim=(1, 2, 3)).topk(4).values > 1.0)
    assert not torch.equal(kept["l2"], kept["random"])


def test_bad_requests_fail_before_any_work() -> None:
    with pytest.raises(ConfigError, match="data"):
        prune(create_model("fmnist_tiny"), StructuredConfig(importance="taylor"), X)
    with pytest.raises(ConfigError, match="ignore names modules that do not exist"):
        prune(create_model("fmnist_tiny"), StructuredConfig(ignore=("nope",)), X)
    with pytest.raises(ValueError, match="keep"):
        StructuredConfig(keep=0)


def test_pruned_model_exports_to_onnx_and_runs_in_onnx_runtime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    small = prune(create_model("fmnist_resnet"), StructuredConfig(keep=0.5), X).eval()
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(small, (torch.randn(2, 1, 28, 28),), path, dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    x = torch.randn(5, 1, 28, 28)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, small(x).detach().numpy(), atol=1e-4)
