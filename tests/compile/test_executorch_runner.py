"""The ExecuTorch (XNNPACK) runner: .pte export, dynamic batch, child spec, missing kernels."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.data import DataSplits
from slimkit.errors import ConfigError, DataError, MissingDependencyError
from slimkit.measure import get_runner
from slimkit.models import create_model

pytest.importorskip("executorch")

from slimkit.compile._executorch import (
    ExecuTorchConfig,
    ExecuTorchRunner,
    build_runner,
    export_pte,
)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fmnist_tiny").eval()


@pytest.fixture(scope="module")
def runner(tiny: nn.Module) -> Iterator[ExecuTorchRunner]:
    built = build_runner(tiny, torch.randn(1, 1, 28, 28), None, ExecuTorchConfig(max_batch=32))
    yield built
    built.close()


def test_registered_under_its_name() -> None:
    assert get_runner("executorch") is ExecuTorchRunner


def test_every_batch_up_to_the_bound_equals_pytorch(
    runner: ExecuTorchRunner, tiny: nn.Module, fmnist_small: DataSplits
) -> None:
    assert runner.max_batch == 32
    assert runner.fallback_ops == ["aten::view_copy"]  # flatten; the rest runs in XNNPACK
    # 17 and 32 are past the batch of 15 that torch's fake conv kernel would otherwise leave
    # as the program's bound (see the module docstring).
    with torch.inference_mode():
        for batch in (1, 2, 17, 32):
            x = fmnist_small.test_inputs[:batch]
            assert float((runner(x) - tiny(x)).abs().max()) <= 1e-4
        # Past the planned bound, the batch runs in chunks of max_batch samples.
        x = fmnist_small.test_inputs[:70]
        assert float((runner(x) - tiny(x)).abs().max()) <= 1e-4


def test_artifact_is_the_pte_file_and_the_child_spec_rebuilds_it(
    runner: ExecuTorchRunner, tiny: nn.Module
) -> None:
    assert runner.path.suffix == ".pte"
    assert runner.artifact_size_bytes() == runner.path.stat().st_size > 0
    assert runner.torch_module() is tiny
    spec = runner.child_spec()
    assert spec.payload == {"path": str(runner.path.resolve()), "threads": 1}
    rebuilt = spec.build()
    assert isinstance(rebuilt, ExecuTorchRunner)
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x), runner(x), atol=1e-6, rtol=0)
    rebuilt.close()
    with pytest.raises(ConfigError, match="closed"):
        rebuilt(x)


@pytest.mark.slow  # another export (about 10-20 s)
def test_export_writes_a_static_program_where_asked(tiny: nn.Module, tmp_path: Path) -> None:
    x = torch.randn(4, 1, 28, 28)
    path, fallback = export_pte(tiny, x, tmp_path / "out" / "tiny.pte", dynamic_batch=False)
    assert path.is_file() and set(fallback) <= {"aten::view_copy"}
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pte"]  # no temporary left
    static = ExecuTorchRunner(path)
    assert static.max_batch == 4
    with torch.inference_mode():
        torch.testing.assert_close(static(x), tiny(x), atol=1e-4, rtol=0)


@pytest.mark.slow  # quantize, export and lower (about 20-40 s)
def test_int8_keeps_the_accuracy_of_a_trained_resnet_at_every_batch(
    trained_resnet: nn.Module, fmnist_small: DataSplits
) -> None:
    calibration = fmnist_small.calibration_inputs(256)
    options = ExecuTorchConfig(int8=True, max_batch=64)
    int8 = build_runner(trained_resnet, fmnist_small.example_input(1), None, options, calibration)
    try:
        inputs, labels = fmnist_small.test_inputs, fmnist_small.test_labels
        with torch.inference_mode():
            reference = trained_resnet(inputs)
        got = torch.cat([int8(inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
        float_acc = float((reference.argmax(1) == labels).float().mean())
        int8_acc = float((got.argmax(1) == labels).float().mean())
        assert abs(int8_acc - float_acc) <= 0.01  # 1,000 test images: 10 flips at most
        assert float((got - reference).abs().max()) > 1e-4  # really int8, not fp32
        # about a quarter of the fp32 program: int8 weights, fp32 scales and biases
        fp32 = build_runner(trained_resnet, fmnist_small.example_input(1), None,
                            ExecuTorchConfig(max_batch=64))  # fmt: skip
        assert int8.artifact_size_bytes() < 0.4 * fp32.artifact_size_bytes()
        fp32.close()
        assert int8.fallback_ops is not None and set(int8.fallback_ops) <= {"aten::view_copy"}
    finally:
        int8.close()


def test_int8_needs_real_calibration_before_any_work() -> None:
    net, x = nn.Linear(4, 2), torch.zeros(1, 4)
    with pytest.raises(ConfigError, match="needs calibration inputs"):
        build_runner(net, x, None, {"int8": True})
    with pytest.raises(DataError, match="got none"):
        export_pte(net, x, "unused.pte", calibration=torch.zeros(0, 4))
    with pytest.raises(DataError, match=r"shape \(3,\)"):
        export_pte(net, x, "unused.pte", calibration=torch.zeros(8, 3))
    with pytest.raises(DataError, match="NaN"):
        export_pte(net, x, "unused.pte", calibration=torch.full((8, 4), float("nan")))
    assert not Path("unused.pte").exists()


class _FoldsBatchIntoRows(nn.Module):
    """Arithmetic on the dynamic batch size, as transformers do (batch * tokens rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return self.linear(x.reshape(batch * tokens, width)).reshape(batch, tokens, width)


def test_arithmetic_on_symbolic_sizes_runs_as_executorch_prim_ops(tmp_path: Path) -> None:
    net = _FoldsBatchIntoRows().eval()
    path, fallback = export_pte(net, torch.randn(2, 4, 8), tmp_path / "rows.pte", max_batch=8)
    assert "executorch_prim::mul.Scalar" in fallback  # not reported as a missing kernel
    runner = ExecuTorchRunner(path)
    x = torch.randn(5, 4, 8)
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), net(x), atol=1e-5, rtol=0)
    runner.close()


class _TokenClassifier(nn.Module):
    """Integer token ids in, as a transformer takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 16)
        self.linear = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embedding(ids).mean(1))


def test_int8_calibrates_on_token_ids_as_integers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _TokenClassifier().eval()
    ids = torch.randint(0, 50, (64, 12))
    path, _ = export_pte(net, ids[:2], tmp_path / "tokens.pte", calibration=ids)
    with ExecuTorchRunner(path) as runner, torch.inference_mode():
        out, ref = runner(ids[:8]), net(ids[:8])
    assert out.shape == (8, 4) and float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())


class _Sorts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.linear(x), dim=1).values


@pytest.mark.slow  # another export (about 10 s)
def test_an_operator_without_a_kernel_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no kernel for aten::sort"):
        export_pte(_Sorts(), torch.randn(2, 8), tmp_path / "sorts.pte")
    assert not (tmp_path / "sorts.pte").exists()


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ExecuTorch program"):
        ExecuTorchRunner(tmp_path / "missing.pte")
    broken = tmp_path / "broken.pte"
    broken.write_bytes(b"not a program")
    with pytest.raises(ConfigError, match="cannot load"):
        ExecuTorchRunner(broken)
    with pytest.raises(ConfigError, match="invalid ExecuTorchConfig"):
        build_runner(nn.Linear(2, 2), torch.zeros(1, 2), None, {"max_batch": 0})


def test_a_missing_executorch_is_one_line_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch now fails
    with pytest.raises(MissingDependencyError, match=r"slimkit\[executorch\]") as info:
        build_runner(nn.Linear(2, 2), torch.zeros(1, 2), None)
    assert "\n" not in str(info.value)
