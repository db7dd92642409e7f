"""Fixtures of the compile tests: a briefly trained fmnist_resnet and its fp32 ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.data import DataSplits
from slimkit.measure import ProfileConfig
from slimkit.models import create_model
from slimkit.train import TrainConfig, train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test of this package runs on one intra-op thread."""


@pytest.fixture(scope="session")
def trained_resnet(fmnist_small: DataSplits) -> nn.Module:
    """fmnist_resnet after two epochs on 2,000 real images (about 78 % test accuracy)."""
    config = TrainConfig(epochs=2, lr=0.05, batch_size=64, threads=1, augment=False)
    # Seeded: the same weights whichever test builds this fixture first (the initialization
    # drew from the global generator, whose state depended on the tests run before).
    torch.manual_seed(0)
    return train(create_model("fmnist_resnet"), config, fmnist_small).model.eval()


@pytest.fixture(scope="session")
def resnet_onnx(
    trained_resnet: nn.Module, fmnist_small: DataSplits, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The trained resnet exported to fp32 ONNX (dynamic batch), checked against PyTorch."""
    from slimkit.compile._onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "resnet.onnx"
    return export_onnx(trained_resnet, fmnist_small.example_input(4), path)


@pytest.fixture(scope="session")
def resnet_int8_onnx(
    resnet_onnx: Path, fmnist_small: DataSplits, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The default static int8 (U8S8 QDQ, per-channel, min-max) on 128 real training images."""
    from slimkit.quantize import int8_static_onnx

    calib = fmnist_small.calibration_inputs(128)
    return int8_static_onnx(resnet_onnx, calib, tmp_path_factory.mktemp("int8") / "u8s8.onnx")


@pytest.fixture
def quick_timing() -> ProfileConfig:
    """Short timings, one thread, no child process."""
    return ProfileConfig(
        threads=1,
        warmup=2,
        min_runs=5,
        max_seconds=0.2,
        throughput_batch=16,
        memory=False,
        energy=False,
    )
