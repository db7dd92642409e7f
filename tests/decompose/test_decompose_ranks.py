"""Rank selection: energy, VBMF (never rank 0) and the global budget allocation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.decompose import (
    DecomposeConfig,
    allocate,
    decompose,
    decomposition_report,
    energy_rank,
    evbmf_rank,
)
from slimkit.errors import ConfigError


@pytest.mark.parametrize("shape", [(60, 80), (80, 60), (2, 50), (1, 30), (300, 20)])
def test_vbmf_never_gives_rank_zero_on_noise_or_zeros(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    assert evbmf_rank(torch.randn(*shape, generator=g)) >= 1
    assert evbmf_rank(torch.zeros(*shape)) == 1
    assert evbmf_rank(1e-30 * torch.randn(*shape, generator=g)) >= 1


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_vbmf_recovers_the_rank_of_signal_plus_noise(rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    signal = torch.randn(100, rank, generator=g) @ torch.randn(rank, 70, generator=g)
    assert evbmf_rank(signal + 0.05 * torch.randn(100, 70, generator=g)) == rank


def test_energy_rank_keeps_the_asked_fraction() -> None:
    squared = torch.tensor([50.0, 30.0, 15.0, 5.0])
    assert [energy_rank(squared, e) for e in (0.5, 0.8, 0.95, 1.0)] == [1, 2, 3, 4]


def test_vbmf_rule_on_a_layer_of_pure_noise_or_zeros_still_gives_rank_one() -> None:
    torch.manual_seed(0)
    noise, zeros = nn.Linear(64, 48), nn.Linear(48, 64)
    nn.init.zeros_(zeros.weight)
    model = nn.Sequential(noise, nn.ReLU(), zeros)
    config = DecomposeConfig(rank="vbmf", round_to=1, speed_gate=False)
    small = decompose(model, config, torch.randn(4, 64))
    rows = decomposition_report(small)["layers"]
    assert [r["rank"] for r in rows] == [[1], [1]]
    assert all(r["kept"] for r in rows)


def test_allocation_takes_the_least_error_per_cost_and_meets_the_budget() -> None:
    layers = [
        [(100, 0.0), (50, 0.02), (25, 0.30)],  # cheap to halve, costly to quarter
        [(100, 0.0), (50, 0.10), (25, 0.12)],  # costly to halve, then cheap
    ]
    picks, total = allocate(layers, fixed=20, budget=100)
    assert (picks, total) == ([1, 2], 95)  # the best of all pairs that fit (error 0.14)
    picks, total = allocate(layers, fixed=20, budget=150)
    assert (picks, total) == ([1, 1], 120)  # what the last cut left is spent back
    picks, total = allocate(layers, fixed=20, budget=10)  # unreachable: everything cut
    assert picks == [2, 2] and total == 70


def test_budget_rule_meets_target_macs_and_params(
    resnet_one_epoch: nn.Module, fmnist_small
) -> None:
    x = fmnist_small.example_input(1)
    for target in ("target_macs", "target_params"):
        config = DecomposeConfig(**{target: 0.5}, speed_gate=False)
        report = decomposition_report(decompose(resnet_one_epoch, config, x))
        assert report["allocation"]["met"], report["allocation"]
        kind = "macs" if target == "target_macs" else "params"
        assert report[f"{kind}_after"] <= 0.5 * report[f"{kind}_before"]
        assert report[f"{kind}_after"] >= 0.3 * report[f"{kind}_before"]  # not overshot wildly


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="target_macs or target_params"):
        DecomposeConfig.parse({"rank": "budget"})
    with pytest.raises(ConfigError, match="not both"):
        DecomposeConfig.parse({"target_macs": 0.5, "target_params": 0.5})
    with pytest.raises(ConfigError, match="leave rank out"):
        DecomposeConfig.parse({"target_macs": 0.5, "rank": "energy"})
