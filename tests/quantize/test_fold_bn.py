"""Batch-norm folding on the shared graph: exact on real images, only where it is safe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.compile import batchnorm_pairs, fold_batchnorm
from slimkit.data import DataSplits
from slimkit.models import create_model
from slimkit.serialize import load_model, save_model


def with_real_statistics(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Running statistics from real images and random affine parameters, like a trained net."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for batch in images.split(128):
            model(batch)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    return model.eval()


def norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "kwargs"), [("fmnist_resnet", {"widths": [8, 16, 24]}), ("fmnist_tiny", {})]
)
def test_folding_is_exact_on_real_images(name, kwargs, fmnist_small: DataSplits) -> None:
    torch.manual_seed(0)
    model = with_real_statistics(create_model(name, **kwargs), fmnist_small.train_inputs[:512])
    pairs = norms(model)  # every norm of these models follows a conv
    assert pairs >= 3
    folded = fold_batchnorm(model, fmnist_small.example_input())
    assert norms(folded) == 0 and norms(model) == pairs  # the input model is untouched
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) >= pairs
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    x = fmnist_small.test_inputs[:200]
    with torch.no_grad():
        diff = (folded(x) - model(x)).abs().max()
    assert float(diff) <= 1e-5


def test_stem_pair_and_order(fmnist_small: DataSplits) -> None:
    model = create_model("fmnist_resnet", widths=[8, 16, 24]).eval()
    pairs = batchnorm_pairs(model, fmnist_small.example_input())
    assert (pairs[0].layer, pairs[0].norm) == ("stem.0", "stem.1")
    assert ("stages.1.0.shortcut.0", "stages.1.0.shortcut.1") in [(p.layer, p.norm) for p in pairs]


def test_linear_and_batchnorm1d_fold() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    model = with_real_statistics(model, torch.randn(256, 6))
    folded = fold_batchnorm(model, torch.randn(2, 6))
    assert isinstance(folded[1], nn.Identity)
    x = torch.randn(32, 6)
    assert torch.allclose(folded(x), model(x), atol=1e-6)


class SharedOutput(nn.Module):
    """The conv's output feeds the norm and the residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class NormFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class SharedNorm(nn.Module):
    """One norm after two convs: it cannot be folded into both."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


@pytest.mark.parametrize("cls", [SharedOutput, NormFirst, SharedNorm])
def test_unsafe_patterns_are_left_alone(cls) -> None:
    torch.manual_seed(0)
    model = with_real_statistics(cls(), torch.randn(64, 1, 8, 8))
    example = torch.randn(2, 1, 8, 8)
    assert batchnorm_pairs(model, example) == []
    folded = fold_batchnorm(model, example)
    assert norms(folded) == norms(model) and torch.equal(folded(example), model(example))


def test_folded_model_saves_and_reloads(tmp_path: Path, fmnist_small: DataSplits) -> None:
    model = with_real_statistics(
        create_model("fmnist_resnet", widths=[8, 16, 24]), fmnist_small.train_inputs[:256]
    )
    folded = fold_batchnorm(model, fmnist_small.example_input())
    again = load_model(save_model(folded, tmp_path / "folded"))
    assert norms(again) == 0 and again.stem[0].bias is not None
    x = fmnist_small.test_inputs[:32]
    assert torch.equal(folded(x), again(x))
