"""The ONNX Runtime runner inside slimkit.measure: profile, compare, peak RAM, settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.compile._ort import OnnxRuntimeRunner
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.measure import ProfileConfig, compare, get_runner, profile


def test_registered_under_its_name() -> None:
    assert get_runner("onnxruntime") is OnnxRuntimeRunner


def test_profile_gives_size_latency_throughput_and_peak_ram(
    resnet_onnx: Path, fmnist_small: DataSplits
) -> None:
    config = ProfileConfig(
        threads=1, warmup=2, min_runs=5, max_seconds=0.2, throughput_batch=32, energy=False
    )
    report = profile(
        OnnxRuntimeRunner(resnet_onnx), fmnist_small.example_input(4), config=config,
        data=fmnist_small,
    )  # fmt: skip
    assert report.runner == "onnxruntime"
    assert report.size_bytes == resnet_onnx.stat().st_size
    assert 0 < report.latency.p50_ms <= report.latency.p99_ms
    assert report.throughput > 0 and report.throughput_batch == 32
    # The child process rebuilt the session from the file's path and ran batches of 32.
    assert report.peak_ram_bytes is not None and report.peak_ram_bytes > 0
    assert report.macs is None and "no torch module" in (report.macs_note or "")
    assert 0.6 <= report.accuracy <= 1.0  # two epochs on 2,000 images


def test_fp32_onnx_equals_pytorch_on_real_images_and_in_compare(
    trained_resnet: nn.Module, resnet_onnx: Path, fmnist_small: DataSplits
) -> None:
    runner = OnnxRuntimeRunner(resnet_onnx, threads=1)
    with torch.inference_mode():
        for x in fmnist_small.test_inputs.split(250):
            assert float((runner(x) - trained_resnet(x)).abs().max()) <= 1e-4
    params = sum(p.numel() for p in trained_resnet.parameters())
    total, nonzero = runner.parameter_counts()
    # The exporter folds each BatchNorm into its conv: the BN's weight and bias (2 per channel)
    # become one conv bias per channel.
    bn_channels = sum(
        m.num_features for m in trained_resnet.modules() if isinstance(m, nn.BatchNorm2d)
    )
    assert total == params - bn_channels and 0 < nonzero <= total
    config = ProfileConfig(threads=1, warmup=1, min_runs=3, max_seconds=0.1, memory=False)
    result = compare(trained_resnet, runner, fmnist_small.example_input(1), config=config,
                     data=fmnist_small)  # fmt: skip
    assert result.accuracy_delta == pytest.approx(0.0, abs=1e-3)
    assert result.candidate.runner == "onnxruntime" and result.baseline.runner == "torch-eager"


def test_child_spec_rebuilds_the_same_runner(resnet_onnx: Path, fmnist_small: DataSplits) -> None:
    runner = OnnxRuntimeRunner(resnet_onnx, threads=2, optimization_level="basic")
    spec = runner.child_spec()
    assert spec.payload["path"] == str(resnet_onnx.resolve())
    rebuilt = spec.build()
    assert isinstance(rebuilt, OnnxRuntimeRunner)
    assert (rebuilt.threads, rebuilt.optimization_level) == (2, "basic")
    x = fmnist_small.example_input(3)
    torch.testing.assert_close(rebuilt(x), runner(x), atol=1e-5, rtol=0)
    runner.close()
    with pytest.raises(ConfigError, match="closed"):
        runner(x)


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_every_optimization_level_gives_the_same_outputs(
    resnet_onnx: Path, fmnist_small: DataSplits, level: str
) -> None:
    x = fmnist_small.example_input(8)
    reference = OnnxRuntimeRunner(resnet_onnx, optimization_level="disable")(x)
    got = OnnxRuntimeRunner(resnet_onnx, optimization_level=level)(x)  # type: ignore[arg-type]
    assert float((got - reference).abs().max()) <= 1e-4


def test_clear_errors(resnet_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ONNX file"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="optimization_level"):
        OnnxRuntimeRunner(resnet_onnx, optimization_level="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threads"):
        OnnxRuntimeRunner(resnet_onnx, threads=0)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot load"):
        OnnxRuntimeRunner(broken)
