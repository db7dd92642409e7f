"""The torch.compile (inductor) runner: same outputs as eager, frozen weights, a bf16 backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.compile import CompileConfig, TorchCompileRunner, backend_unavailable, compile_model
from slimkit.data import DataSplits
from slimkit.env import _read_cpuinfo
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


def test_bf16_backend_keeps_accuracy_or_says_why_it_cannot_run(
    trained_resnet: nn.Module, fmnist_small: DataSplits, tmp_path: Path
) -> None:
    config = CompileConfig(
        candidates=("torch-eager", "torch-compile-bf16"),
        batch_sizes=(8,),
        max_seconds=0.1,
        accuracy_tolerance=1.0,  # one image of the 500 is 0.2 point: the test asserts below
    )
    inputs, labels = fmnist_small.test_inputs[:500], fmnist_small.test_labels[:500]
    result = compile_model(
        trained_resnet, config, inputs[:1], check_inputs=inputs, check_labels=labels,
        workdir=tmp_path,
    )  # fmt: skip
    result.runner.close()
    row = next(r for r in result.rows if r.backend == "torch-compile-bf16")
    _, flags = _read_cpuinfo()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        assert row.status == "skipped: " + (backend_unavailable("torch-compile-bf16") or "")
        assert "no bf16 instructions" in row.status
        return
    eager = next(r for r in result.rows if r.backend == "torch-eager")
    assert row.status in ("ok", "chosen") and row.precision == "bf16", row.status
    # bf16 keeps 8 bits of mantissa: not equal to fp32, but the same predictions within 1 point.
    assert 0 < row.max_abs_error < 0.5
    assert abs(row.accuracy - eager.accuracy) <= 0.01
