"""Quantization-aware training: the fake-quantized model fine-tuned with the ordinary loop.

The fake-quant ops pass gradients straight through inside their range (and stop them where
values are clamped), so the foundation's :func:`slimkit.train.train` fine-tunes the model as it
is. The scales and zero points are buffers, not parameters: they stay as post-training
calibration set them, and the weights learn to sit well on that grid.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit._runtime import log
from slimkit.data import DataSplits
from slimkit.quantize._config import QuantConfig
from slimkit.train import train

__all__ = ["quantization_aware_training"]


def quantization_aware_training(
    model: nn.Module, config: QuantConfig, data: DataSplits
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fine-tune a fake-quantized ``model`` with ``config.qat_config()``; returns a new model.

    Returns:
        The fine-tuned copy (eval mode) and the training history (per-epoch test accuracy).
    """
    train_config = config.qat_config()
    log(f"quantize: quantization-aware training, {train_config.epochs} epoch(s) at lr "
        f"{train_config.lr}")  # fmt: skip
    result = train(model, train_config, data)
    return result.model.eval(), [dict(r) for r in result.history]
