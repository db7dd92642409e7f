"""compile_model: every backend built, checked against PyTorch, timed; the table tells all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from slimkit.compile import (
    BuildContext,
    CompileConfig,
    OnnxExportError,
    _backends,
    compile_model,
    export_onnx,
    register_backend,
)
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.measure import TorchEagerRunner
from slimkit.models import create_model

FAST = {"max_seconds": 0.1, "passes": ("remove_dropout", "fold_batchnorm")}


@pytest.fixture
def extra_backends() -> object:
    """Backends that are skipped, fail, or compute something else (real runners, wrong models)."""
    before = dict(_backends._BACKENDS)
    register_backend("test-missing", needs=("no_such_module_xyz",), extra="nothing")(
        lambda ctx: TorchEagerRunner(ctx.model)
    )

    def broken(ctx: BuildContext) -> TorchEagerRunner:
        raise RuntimeError("cannot build on purpose")

    register_backend("test-broken")(broken)
    register_backend("test-wrong")(lambda ctx: TorchEagerRunner(create_model("fmnist_tiny")))
    yield
    _backends._BACKENDS.clear()
    _backends._BACKENDS.update(before)


def test_auto_keeps_the_fastest_faithful_backend_and_reports_the_rest(
    trained_resnet: nn.Module, fmnist_small: DataSplits, extra_backends: object, tmp_path: Path
) -> None:
    names = ("torch-eager", "onnxruntime", "test-missing", "test-broken", "test-wrong")
    config = CompileConfig(candidates=names, batch_sizes=(1, 8), **FAST)
    result = compile_model(
        trained_resnet,
        config,
        fmnist_small.test_inputs[:1],
        check_inputs=fmnist_small.test_inputs[:300],
        check_labels=fmnist_small.test_labels[:300],
        workdir=tmp_path,
    )
    rows = {r.backend: r for r in result.rows}
    assert rows["test-missing"].status.startswith("skipped: no_such_module_xyz is not installed")
    assert rows["test-broken"].status == "failed: RuntimeError: cannot build on purpose"
    assert rows["test-wrong"].status.startswith("rejected: max abs error")
    assert rows["torch-eager"].ok and rows["onnxruntime"].ok
    assert rows["onnxruntime"].max_abs_error < 1e-4
    assert rows["onnxruntime"].accuracy == rows["torch-eager"].accuracy
    for row in (rows["torch-eager"], rows["onnxruntime"]):
        assert set(row.latency) == {1, 8} and row.latency[8]["p50_ms"] > 0
    assert rows["torch-eager"].speedup[1] == 1.0
    fastest_b1 = min(("torch-eager", "onnxruntime"), key=lambda n: rows[n].latency[1]["p50_ms"])
    assert result.backend == fastest_b1 == result.fastest[1]
    with result.runner as runner:
        out = runner(fmnist_small.test_inputs[:5])
    with torch.no_grad():
        assert (out - trained_resnet(fmnist_small.test_inputs[:5])).abs().max() < 1e-4
    flat = result.to_dict()["backends"]
    assert {r["backend"] for r in flat} == set(names) and "p50_ms_b8" in flat[0]


def test_int8_backend_is_judged_by_accuracy(
    trained_resnet: nn.Module, fmnist_small: DataSplits, resnet_int8_onnx: Path
) -> None:
    config = CompileConfig(
        candidates=("torch-eager", "onnxruntime-int8"), accuracy_tolerance=5.0, **FAST
    )
    result = compile_model(
        trained_resnet,
        config,
        fmnist_small.test_inputs[:1],
        check_inputs=fmnist_small.test_inputs[:300],
        check_labels=fmnist_small.test_labels[:300],
        lowered_onnx=resnet_int8_onnx,
    )
    row = next(r for r in result.rows if r.backend == "onnxruntime-int8")
    assert row.ok, row.status
    assert row.max_abs_error > 1e-4  # int8 is not fp32-exact, yet passes on accuracy
    result.runner.close()
    strict = config.model_copy(update={"accuracy_tolerance": 0.0, "min_cosine": 1.0})
    result = compile_model(
        trained_resnet,
        strict,
        fmnist_small.test_inputs[:1],
        check_inputs=fmnist_small.test_inputs[:300],
        lowered_onnx=resnet_int8_onnx,
    )  # no labels: cosine decides, and 1.0 is out of reach
    row = next(r for r in result.rows if r.backend == "onnxruntime-int8")
    assert row.status.startswith("rejected: cosine")
    result.runner.close()


def test_a_named_backend_that_cannot_run_is_an_error(fmnist_small: DataSplits) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        CompileConfig(backend="nope").backend_names()
    with pytest.raises(ConfigError, match="'onnxruntime-int8' cannot be used: skipped"):
        compile_model(
            create_model("fmnist_tiny"),
            CompileConfig(backend="onnxruntime-int8", **FAST),
            fmnist_small.test_inputs[:1],
        )


def test_a_backend_that_quantizes_by_itself_needs_calibration(fmnist_small: DataSplits) -> None:
    pytest.importorskip("executorch")
    with pytest.raises(ConfigError, match="'executorch-int8' cannot be used: skipped: no calib"):
        compile_model(
            create_model("fmnist_tiny"),
            CompileConfig(backend="executorch-int8", **FAST),
            fmnist_small.test_inputs[:1],
        )


class Zeta(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.special.zeta(x, x + 1.5)


def test_an_operator_onnx_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match=r"no conversion for operator prims\.zeta"):
        export_onnx(Zeta(), torch.rand(2, 3) + 1, tmp_path / "z.onnx")
    assert not (tmp_path / "z.onnx").exists()
    result = compile_model(
        Zeta(), CompileConfig(candidates=("onnxruntime",), **FAST), torch.rand(2, 3) + 1
    )
    row = next(r for r in result.rows if r.backend == "onnxruntime")
    assert "prims.zeta" in row.status and result.backend == "torch-eager"
