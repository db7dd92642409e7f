"""compare(): ratios against hand counts, interleaved timing, one pass over the data."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
import torch
from rich.console import Console
from torch import Tensor, nn

from slimkit.errors import ConfigError
from slimkit.measure import COMPARE_ROUNDS, ProfileConfig, TorchEagerRunner, compare


def two_class(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


INPUTS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
LABELS = torch.tensor([0, 1, 0, 1])


def batches() -> Iterator[tuple[Tensor, Tensor]]:
    """A generator: it can be consumed only once, so compare must read it in one pass."""
    yield INPUTS[:2], LABELS[:2]
    yield INPUTS[2:], LABELS[2:]


def test_a_model_against_itself(fast: ProfileConfig) -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    result = compare(model, model, torch.randn(1, 1, 8, 8), config=fast)
    # Loose bounds: the same model timed in interleaved blocks is about as fast as itself.
    assert 0.5 < result.latency_speedup < 2.0
    assert 0.5 < result.throughput_speedup < 2.0
    assert result.params_ratio == result.macs_ratio == result.size_ratio == 1.0
    assert result.accuracy_delta is None


def test_ratios_and_accuracy_delta_by_hand(fast: ProfileConfig) -> None:
    right = two_class([[1.0, 0.0], [0.0, 1.0]])  # predicts the larger input: 4 of 4
    wrong = two_class([[0.0, 1.0], [1.0, 0.0]])  # predicts the smaller one: 0 of 4
    with torch.no_grad():
        wrong.weight[0, 0] = 0.0  # already zero: still 4 parameters, 2 non-zero
    big = nn.Sequential(nn.Linear(2, 64), nn.Linear(64, 2))
    result = compare(big, right, INPUTS[:1], config=fast, data=batches())
    assert result.params_ratio == pytest.approx(4 / (2 * 64 + 64 + 64 * 2 + 2))
    assert result.macs_ratio == pytest.approx(4 / (2 * 64 + 64 * 2))
    assert result.candidate.accuracy == 1.0
    assert result.accuracy_delta == pytest.approx(1.0 - result.baseline.accuracy)

    both = compare(right, wrong, INPUTS[:1], config=fast, data=batches())
    assert (both.baseline.accuracy, both.candidate.accuracy, both.accuracy_delta) == (
        1.0,
        0.0,
        -1.0,
    )
    assert both.candidate.params_nonzero == 2


class Logged(TorchEagerRunner):
    """An eager runner that logs which runner ran, to check the interleaving."""

    def __init__(self, module: nn.Module, tag: str, log: list[str]) -> None:
        super().__init__(module)
        self.tag, self.log = tag, log

    def __call__(self, inputs: Tensor) -> Tensor:
        self.log.append(self.tag)
        return super().__call__(inputs)


def test_timings_are_interleaved(fast: ProfileConfig) -> None:
    log: list[str] = []
    a, b = Logged(nn.Linear(4, 4), "a", log), Logged(nn.Linear(4, 4), "b", log)
    compare(a, b, torch.zeros(1, 4), config=fast.model_copy(update={"warmup": 0}))
    switches = sum(x != y for x, y in itertools.pairwise(log))
    # Two timings (latency, throughput), each COMPARE_ROUNDS rounds alternating A B, B A, ...
    assert switches >= 2 * (COMPARE_ROUNDS - 1)
    assert log.count("a") >= 2 * fast.min_runs and log.count("b") >= 2 * fast.min_runs


def test_models_are_restored_even_when_the_same(fast: ProfileConfig) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    compare(model, model, torch.zeros(1, 4), config=fast)
    assert model.training


def test_candidate_with_other_inputs_is_rejected(fast: ProfileConfig) -> None:
    with pytest.raises(ConfigError, match=r"inputs of shape \(1, 4\)"):
        compare(nn.Linear(4, 2), nn.Linear(5, 2), torch.zeros(3, 4), config=fast)


def test_comparison_dict_and_table(fast: ProfileConfig) -> None:
    result = compare(nn.Linear(8, 8), nn.Linear(8, 2), torch.zeros(1, 8), config=fast)
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == ["baseline", "candidate", "ratios"]
    assert list(data["ratios"]) == [
        "latency_speedup", "throughput_speedup", "params_ratio", "macs_ratio", "size_ratio",
        "accuracy_delta",
    ]  # fmt: skip
    assert data["ratios"]["params_ratio"] == pytest.approx(18 / 72)
    console = Console(record=True, width=140)
    console.print(result.to_table())
    text = console.export_text()
    assert "0.25x" in text and "baseline" in text
