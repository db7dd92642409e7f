"""Inference passes on hand-built models: each rewrite is exact, and the result still saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from slimkit.compile import (
    FusedConv2d,
    FusedLinear,
    PassCheckError,
    _passes,
    apply_passes,
    fuse_activations,
    remove_dropout,
)
from slimkit.errors import ConfigError
from slimkit.models import create_model
from slimkit.serialize import load_model, save_model


def _randomize_norms(model: nn.Module) -> nn.Module:
    # Fresh batch norms are the identity; random statistics make folding them a real test.
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.drop = nn.Dropout2d(0.3)
        self.fc = nn.Linear(8, 16)
        self.bn1d = nn.BatchNorm1d(16)
        self.gelu = nn.GELU()
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.bn(self.conv(x))))
        x = x.mean((2, 3))
        return self.head(self.gelu(self.bn1d(self.fc(x))))


class SharedRelu(nn.Module):
    """One ReLU module called twice: fusing it into the first conv would lose the second call."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.b(self.relu(self.a(x))))


def test_every_default_pass_is_exact_on_a_hand_built_model() -> None:
    model = _randomize_norms(ConvBnRelu())
    x = torch.randn(4, 3, 8, 8)
    fused, records = apply_passes(model, x)
    assert {r.name: r.changed for r in records} == {
        "remove_dropout": 1,
        "fold_batchnorm": 2,
        "fuse_activations": 2,
    }
    assert isinstance(fused.conv, FusedConv2d) and fused.conv.activation == "relu6"
    assert isinstance(fused.fc, FusedLinear) and fused.fc.activation == "gelu"
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() <= 1e-5
    assert all(r.max_abs_error <= 1e-5 for r in records)


def test_a_shared_activation_is_not_fused() -> None:
    model = SharedRelu().eval()
    x = torch.randn(2, 3, 6, 6)
    fused, n = fuse_activations(model, x)
    assert n == 0 and type(fused.a) is nn.Conv2d
    assert torch.equal(fused(x), model(x))


def test_remove_dropout_leaves_the_input_model_alone() -> None:
    model = create_model("fmnist_cnn")
    clean, n = remove_dropout(model)
    assert n == 1
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in clean.modules())


def test_passed_model_saves_and_reloads_without_pickle(tmp_path: Path) -> None:
    model = _randomize_norms(create_model("fmnist_resnet"))
    x = torch.randn(3, 1, 28, 28)
    fused, _ = apply_passes(model, x)
    save_model(fused, tmp_path / "m")
    again = load_model(tmp_path / "m").eval()
    assert isinstance(again.stem[0], FusedConv2d)
    with torch.no_grad():
        assert torch.equal(again(x), fused(x))
        assert (again(x) - model(x)).abs().max() <= 1e-5


def test_unknown_pass_and_a_broken_pass_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("fmnist_tiny").eval()
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ConfigError, match="unknown compile pass"):
        apply_passes(model, x, ("fold_batchnorm", "nope"))

    def scale_weights(m: nn.Module, _: Tensor) -> tuple[nn.Module, int]:
        m = create_model("fmnist_tiny").eval()  # different weights: not the same function
        return m, 1

    monkeypatch.setitem(_passes._PASSES, "broken", scale_weights)
    with pytest.raises(PassCheckError, match="'broken' changed the outputs"):
        apply_passes(model, torch.randn(2, 1, 28, 28), ("broken",))
