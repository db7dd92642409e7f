"""The torch.compile (inductor) runner: same outputs as eager, frozen weights, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from slimkit.compile import TorchCompileRunner
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.measure import get_runner

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="inductor needs a C++ compiler",
)


def test_registered_under_its_name() -> None:
    assert get_runner("torch-compile") is TorchCompileRunner


@pytest.mark.parametrize("freezing", [True, False])
def test_compiled_matches_eager(
    trained_resnet: nn.Module, fmnist_small: DataSplits, freezing: bool
) -> None:
    inputs = fmnist_small.test_inputs[:16]
    runner = TorchCompileRunner(trained_resnet, freezing=freezing)
    assert runner.warm_up(inputs) > 0
    with torch.inference_mode():
        expected = trained_resnet(inputs)
    assert (runner(inputs) - expected).abs().max() < 1e-4


def test_spec_round_trip_keeps_the_settings() -> None:
    runner = TorchCompileRunner(nn.Linear(4, 2).eval(), freezing=False, dynamic=True)
    rebuilt = TorchCompileRunner.from_spec(runner.child_spec())
    assert (rebuilt.mode, rebuilt.dynamic, rebuilt.freezing) == ("default", True, False)


def test_unknown_mode_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown torch\.compile mode 'fastest'.*use one of"):
        TorchCompileRunner(nn.Linear(4, 2), mode="fastest")  # type: ignore[arg-type]
