"""The OpenVINO runner: ONNX and PyTorch sources, explicit precision, child spec, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.data import DataSplits
from slimkit.errors import ConfigError, MissingDependencyError
from slimkit.measure import ProfileConfig, get_runner, profile
from slimkit.models import create_model

pytest.importorskip("openvino")

from slimkit.compile._onnx import export_onnx
from slimkit.compile._openvino import (
    OpenVinoConfig,
    OpenVinoRunner,
    build_runner,
    cpu_precisions,
)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fmnist_tiny").eval()


@pytest.fixture(scope="module")
def tiny_onnx(tiny: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = torch.randn(4, 1, 28, 28)
    return export_onnx(tiny, x, tmp_path_factory.mktemp("ov") / "tiny.onnx")


def _max_diff(runner: OpenVinoRunner, model: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((runner(x) - model(x)).abs().max())


def test_registered_under_its_name() -> None:
    assert get_runner("openvino") is OpenVinoRunner


def test_torch_module_runs_in_f32_like_pytorch(tiny: nn.Module, fmnist_small: DataSplits) -> None:
    x = fmnist_small.test_inputs[:64]
    runner = build_runner(tiny, x[:1], None, {"threads": 1})  # batch 1 still dynamic
    assert runner.path.suffix == ".xml" and runner.precision == "f32"
    for batch in (1, 7, 64):  # dynamic batch
        assert _max_diff(runner, tiny, x[:batch]) <= 1e-4
    xml, binary = runner.artifact_files()
    assert runner.artifact_size_bytes() == xml.stat().st_size + binary.stat().st_size > 0
    # fp32 weights on disk (save_model would halve them by default): at least 4 bytes each
    assert binary.stat().st_size >= 4 * sum(p.numel() for p in tiny.parameters()) * 0.9
    assert runner.torch_module() is tiny
    rebuilt = runner.child_spec().build()
    assert isinstance(rebuilt, OpenVinoRunner) and rebuilt.threads == 1
    torch.testing.assert_close(rebuilt(x[:5]), runner(x[:5]), atol=1e-6, rtol=0)
    rebuilt.close()
    folder = runner.path.parent
    runner.close()
    assert not folder.exists()  # the temporary IR went with the runner
    with pytest.raises(ConfigError, match="closed"):
        runner(x[:1])


def test_onnx_file_runs_like_pytorch_and_counts_its_initializers(
    tiny: nn.Module, tiny_onnx: Path, fmnist_small: DataSplits
) -> None:
    runner = build_runner(tiny, fmnist_small.example_input(2), tiny_onnx)
    assert runner.path == tiny_onnx
    assert _max_diff(runner, tiny, fmnist_small.test_inputs[:32]) <= 1e-4
    assert runner.artifact_size_bytes() == tiny_onnx.stat().st_size
    total, nonzero = runner.parameter_counts()
    bn_channels = sum(m.num_features for m in tiny.modules() if isinstance(m, nn.BatchNorm2d))
    params = sum(p.numel() for p in tiny.parameters())
    # The exporter folds each BatchNorm into its conv (2 values per channel become 0 or 1).
    assert params - 2 * bn_channels <= total <= params - bn_channels
    assert 0 < nonzero <= total
    spec = runner.child_spec()
    assert spec.payload == {"path": str(tiny_onnx.resolve()), "threads": 1,
                            "precision": "f32", "hint": "latency"}  # fmt: skip
    runner.close()
    assert tiny_onnx.exists()  # a file the runner did not make is not deleted


def test_bf16_runs_in_bf16_or_is_refused_with_the_reason(tiny: nn.Module, tiny_onnx: Path) -> None:
    x = torch.randn(8, 1, 28, 28)
    config = OpenVinoConfig(precision="bf16")
    if "bf16" in cpu_precisions():
        runner = build_runner(tiny, x, tiny_onnx, config)
        assert runner.precision == "bf16"
        with torch.inference_mode():
            torch.testing.assert_close(runner(x), tiny(x), atol=0.05, rtol=0.05)
    else:  # AVX2-only CPUs: OpenVINO would silently run f32
        with pytest.raises(ConfigError, match=r"no bf16 support.*silently run f32"):
            build_runner(tiny, x, tiny_onnx, config)


def test_throughput_hint_gives_the_same_outputs(tiny: nn.Module, tiny_onnx: Path) -> None:
    x = torch.randn(16, 1, 28, 28)
    latency = OpenVinoRunner(tiny_onnx, hint="latency")
    throughput = OpenVinoRunner(tiny_onnx, hint="throughput", threads=2)
    torch.testing.assert_close(throughput(x), latency(x), atol=1e-5, rtol=0)


@pytest.mark.slow  # a spawned child imports torch and OpenVINO (about 15-40 s here)
def test_profile_measures_peak_ram_in_a_child(tiny_onnx: Path, fmnist_small: DataSplits) -> None:
    config = ProfileConfig(threads=1, warmup=1, min_runs=3, max_seconds=0.1,
                           throughput_batch=16, energy=False)  # fmt: skip
    report = profile(OpenVinoRunner(tiny_onnx), fmnist_small.example_input(1), config=config)
    assert report.runner == "openvino"
    assert report.size_bytes == tiny_onnx.stat().st_size
    assert report.peak_ram_bytes is not None and report.peak_ram_bytes > 0


def test_clear_errors(tiny: nn.Module, tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no model file"):
        OpenVinoRunner(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="threads"):
        OpenVinoRunner(tiny_onnx, threads=0)
    with pytest.raises(ConfigError, match="precision"):
        OpenVinoRunner(tiny_onnx, precision="int4")  # type: ignore[arg-type]
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"\.onnx files or OpenVINO IR"):
        OpenVinoRunner(other)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot read"):
        OpenVinoRunner(broken)
    with pytest.raises(ConfigError, match="needs an ONNX file"):
        build_runner(tiny, torch.zeros(1, 1, 28, 28), None, {"source": "onnx"})
    with pytest.raises(ConfigError, match="invalid OpenVinoConfig"):
        build_runner(tiny, torch.zeros(1, 1, 28, 28), None, {"precision": "fp8"})


def test_a_missing_openvino_is_one_line_with_the_install_command(
    tiny: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slimkit.compile._openvino as module

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    monkeypatch.setattr(module, "_CORE", None)
    with pytest.raises(MissingDependencyError, match=r"slimkit\[openvino\]") as info:
        build_runner(tiny, torch.zeros(1, 1, 28, 28), None)
    assert "\n" not in str(info.value)
