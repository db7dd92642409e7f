"""AOTInductor backend: compiled ahead of time into a .pt2 package, same outputs as eager."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from slimkit.compile import CompileConfig, compile_model
from slimkit.compile._aoti import AotInductorRunner
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.models import create_model

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="inductor needs a C++ compiler",
)


def test_aoti_backend_matches_eager_and_its_package_reopens(
    fmnist_small: DataSplits, tmp_path: Path
) -> None:
    model = create_model("fmnist_tiny").eval()
    config = CompileConfig(
        candidates=("torch-eager", "torch-aoti"), batch_sizes=(1, 8), max_seconds=0.1
    )
    inputs = fmnist_small.test_inputs[:300]
    result = compile_model(model, config, inputs[:1], check_inputs=inputs, workdir=tmp_path)
    result.runner.close()
    row = {r.backend: r for r in result.rows}["torch-aoti"]
    assert row.ok and row.max_abs_error < 1e-4 and set(row.latency) == {1, 8}
    package = tmp_path / "model.aoti.pt2"
    assert row.size_bytes == package.stat().st_size > 0
    # Opened from the file alone (as a child process or a server would): any batch size.
    with AotInductorRunner.from_spec(AotInductorRunner(package).child_spec()) as runner:
        for batch in (1, 5, 64):
            with torch.no_grad():
                expected = model(fmnist_small.test_inputs[:batch])
            assert (runner(fmnist_small.test_inputs[:batch]) - expected).abs().max() < 1e-4
        with pytest.raises(NotImplementedError, match="without its module"):
            runner.parameter_counts()


def test_a_missing_package_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no AOTInductor package at"):
        AotInductorRunner(tmp_path / "nothing.pt2")
