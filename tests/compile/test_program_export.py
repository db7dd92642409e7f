"""export_program: a .pt2 ExportedProgram with dynamic axes that reproduces the eager model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from slimkit.compile import ProgramExportError, export_program
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.graph import CaptureError


def test_resnet_round_trips_at_other_batch_sizes(
    trained_resnet: nn.Module, fmnist_small: DataSplits, tmp_path: Path
) -> None:
    path = export_program(trained_resnet, fmnist_small.test_inputs[:1], tmp_path / "r.pt2")
    assert path.stat().st_size > 0 and not list(tmp_path.glob(".*.tmp*"))
    loaded = torch.export.load(path).module()  # our own file, just written
    for batch in (1, 3, 64):
        inputs = fmnist_small.test_inputs[:batch]
        with torch.no_grad():
            assert (loaded(inputs) - trained_resnet(inputs)).abs().max() < 1e-5
    assert trained_resnet.training is False


class TokenMean(nn.Module):
    """Token ids -> mean of their embeddings: batch and sequence length both vary."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embed(ids).mean(1)


def test_token_ids_get_a_dynamic_sequence_axis(tmp_path: Path) -> None:
    model = TokenMean().eval()
    path = export_program(model, torch.randint(0, 50, (2, 16)), tmp_path / "t.pt2")
    ids = torch.randint(0, 50, (5, 7))
    with torch.no_grad():
        assert torch.allclose(torch.export.load(path).module()(ids), model(ids), atol=1e-6)


def test_static_export_refuses_another_batch_size(tmp_path: Path) -> None:
    model = nn.Linear(4, 2).eval()
    path = export_program(model, torch.randn(3, 4), tmp_path / "s.pt2", dynamic_batch=False)
    with pytest.raises(Exception, match="3"):  # torch names the expected size
        torch.export.load(path).module()(torch.randn(5, 4))


class Drifting(nn.Module):
    """Differs between calls: the check against eager must catch it, and nothing is written."""

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.rand_like(x)


def test_a_program_that_differs_from_eager_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ProgramExportError, match="max abs difference"):
        export_program(Drifting(), torch.randn(2, 4), tmp_path / "d.pt2")
    assert list(tmp_path.iterdir()) == []


class DataDependent(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if x.sum() > 0 else -x


def test_uncapturable_model_and_bad_axes_are_named(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="could not capture DataDependent"):
        export_program(DataDependent(), torch.randn(2, 4), tmp_path / "x.pt2")
    with pytest.raises(ConfigError, match="dynamic_axes names dim 3"):
        export_program(
            nn.Linear(4, 2), torch.randn(2, 4), tmp_path / "x.pt2", dynamic_axes={3: "z"}
        )
    assert list(tmp_path.iterdir()) == []
