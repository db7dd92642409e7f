"""The configuration of :func:`slimkit.quantize.quantize`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimkit.config import Config
from slimkit.quantize._observers import QuantSpec
from slimkit.train import TrainConfig

__all__ = ["DEFAULT_QAT", "ObserverName", "QuantConfig"]

ObserverName = Literal["minmax", "moving_average", "percentile", "entropy", "mse"]
LayerType = Literal["conv", "linear"]

DEFAULT_QAT = TrainConfig(epochs=2, lr=0.005, schedule="cosine", weight_decay=0.0, augment=False)
"""Fine-tuning used by ``method: qat`` when ``qat`` is not given: short, with a small learning
rate, since it starts from a trained model and frozen PTQ scales; no augmentation (in short
fine-tuning it costs more fit than it adds)."""


class QuantConfig(Config):
    """What to quantize, to which type, and how.

    Attributes:
        dtype: ``int8`` (integers of ``weight_bits``/``activation_bits``, simulated in PyTorch
            by fake quantization), or ``fp16`` / ``bf16`` (a half-precision copy that takes and
            returns float32).
        method: For ``int8``: ``static`` (activation ranges calibrated on data),
            ``dynamic`` (each batch's own activation range, at run time; weights as static),
            ``qat`` (static, then fine-tuned with the quantization in the loop).
        observer: How activation ranges are calibrated: ``minmax``, ``moving_average``,
            ``percentile``, ``entropy`` (KL) or ``mse``.
        weight_observer: The same for weights (ranges from the weights themselves).
        percentile: The percentile of the ``percentile`` observer.
        averaging_constant: The ``moving_average`` observer's constant.
        weight_bits: Width of the weights' integers (2 to 8; 4 for a 4-bit model).
        weight_signed: ``int`` weights (default) or ``uint``.
        weight_symmetric: Weights with zero point in the middle (the default: no zero-point
            correction term in integer kernels).
        per_channel: One weight range per output channel (default) instead of one per tensor.
        activation_bits: Width of the activations' integers (2 to 8).
        activation_signed: ``int`` activations; the default ``uint`` (asymmetric ``uint8``) ran
            about 3x faster in ONNX Runtime on x86 than signed activations.
        activation_symmetric: Activations with zero point in the middle.
        layer_types: Which layers are quantized: ``conv`` (Conv1d/Conv2d), ``linear``.
        skip: Layers kept in float: module paths, shell patterns (``stages.2.*``) or a module
            holding others (``stages.0`` covers ``stages.0.0.conv1``).
        fold_bn: Fold each batch norm into the conv/linear before it first.
        calibration_samples: Training samples the activation ranges are calibrated on.
        calibration_batch_size: Samples per calibration forward pass.
        validation_samples: Further (held-out) training samples on which ``accuracy_budget``
            and :func:`~slimkit.quantize.sensitivity` measure the accuracy drop.
        accuracy_budget: Mixed precision: the largest accuracy drop allowed, as a fraction
            (0.003 = 0.3 point); the most sensitive layers go back to float until it is met.
        qat: The fine-tuning of ``method: qat`` (default: :data:`DEFAULT_QAT`).
        seed: Seed of the calibration and validation sample draw.

    Example:
        >>> QuantConfig().weight_spec()
        QuantSpec(bits=8, signed=True, symmetric=True, axis=0)
        >>> QuantConfig(weight_bits=4, method="qat").weight_spec().qrange
        (-7, 7)
        >>> QuantConfig.parse({"dtype": "fp16", "method": "qat"})
        Traceback (most recent call last):
        ...
        slimkit.errors.ConfigError: invalid QuantConfig:
          - (top level): Value error, method 'qat' is for int8 only; leave it out for fp16
    """

    dtype: Literal["int8", "fp16", "bf16"] = "int8"
    method: Literal["static", "dynamic", "qat"] = "static"
    observer: ObserverName = "minmax"
    weight_observer: ObserverName = "minmax"
    percentile: float = Field(default=99.99, gt=50, le=100)
    averaging_constant: float = Field(default=0.01, gt=0, le=1)
    weight_bits: int = Field(default=8, ge=2, le=8)
    weight_signed: bool = True
    weight_symmetric: bool = True
    per_channel: bool = True
    activation_bits: int = Field(default=8, ge=2, le=8)
    activation_signed: bool = False
    activation_symmetric: bool = False
    layer_types: tuple[LayerType, ...] = Field(default=("conv", "linear"), min_length=1)
    skip: tuple[str, ...] = ()
    fold_bn: bool = True
    calibration_samples: int = Field(default=512, ge=1)
    calibration_batch_size: int = Field(default=64, ge=1)
    validation_samples: int = Field(default=1000, ge=1)
    accuracy_budget: float | None = Field(default=None, ge=0, lt=1)
    qat: TrainConfig | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> QuantConfig:
        if self.dtype != "int8":
            if self.method != "static":
                raise ValueError(
                    f"method {self.method!r} is for int8 only; leave it out for {self.dtype}"
                )
            if self.accuracy_budget is not None:
                raise ValueError(
                    f"accuracy_budget chooses layers to keep in float among int8 ones; "
                    f"{self.dtype} converts every layer (leave accuracy_budget out)"
                )
        if self.qat is not None and self.method != "qat":
            raise ValueError(f"qat (fine-tuning) is given but method is {self.method!r}: set "
                             "method: qat, or leave qat out")  # fmt: skip
        return self

    def weight_spec(self) -> QuantSpec:
        """How weights are quantized (per-channel along the output dimension, 0)."""
        return QuantSpec(
            self.weight_bits,
            self.weight_signed,
            self.weight_symmetric,
            0 if self.per_channel else None,
        )

    def activation_spec(self) -> QuantSpec:
        """How a layer's input is quantized (always per tensor)."""
        return QuantSpec(self.activation_bits, self.activation_signed, self.activation_symmetric)

    def qat_config(self) -> TrainConfig:
        """The QAT fine-tuning: ``qat``, or :data:`DEFAULT_QAT`."""
        return self.qat if self.qat is not None else DEFAULT_QAT
