"""Quantization: fp16/bf16 copies and int8 (static, dynamic, QAT, mixed precision) in PyTorch.

The int8 model that :func:`quantize` returns *simulates* integer arithmetic with fake-quantized
layers (:class:`QuantConv2d`, :class:`QuantConv1d`, :class:`QuantLinear`: the float layer on
inputs and weights rounded to their integer grids). It measures the accuracy of int8, it is
what quantization-aware training fine-tunes, and it carries every scale and zero point that the
lowering to a real int8 runtime needs; it is not faster by itself.

Real int8 execution uses ONNX Runtime's own tools (``quant_pre_process``, ``quantize_static``,
``quantize_dynamic``) on the exported float model: :func:`int8_static_onnx`,
:func:`int8_dynamic_onnx`, and :func:`int8_candidates`, which builds several int8 formats,
measures each one's speed and fidelity on this machine and picks the fastest faithful one.

- Calibration observers (:func:`create_observer`): ``minmax``, ``moving_average``,
  ``percentile``, ``entropy`` (KL, as TensorRT), ``mse``; per-tensor or per-channel, symmetric
  or asymmetric, 2 to 8 bits.
- Defaults: weights int8 symmetric per output channel, activations uint8 asymmetric per
  tensor, batch norms folded first (:func:`slimkit.compile.fold_batchnorm`).
- :func:`sensitivity` measures each layer quantized alone; ``accuracy_budget`` keeps the most
  sensitive layers in float until the accuracy drop fits.

Example:
    >>> import torch
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_tiny").eval()
    >>> half = quantize(model, QuantConfig(dtype="bf16"))
    >>> half(torch.zeros(1, 1, 28, 28)).dtype
    torch.float32
    >>> quantizable_layers(model)
    ['0', '3', '6', '11']
"""

from __future__ import annotations

from slimkit.quantize._config import DEFAULT_QAT, QuantConfig
from slimkit.quantize._fake import (
    QUANT_CLASSES,
    QuantConv1d,
    QuantConv2d,
    QuantLinear,
    is_quantized,
)
from slimkit.quantize._float import install_io_cast, output_error, to_dtype
from slimkit.quantize._lowering import (
    DynamicInt8Options,
    Int8Candidate,
    Int8Selection,
    StaticInt8Options,
    default_int8_candidates,
    fp16_onnx,
    int8_candidates,
    int8_dynamic_onnx,
    int8_static_onnx,
)
from slimkit.quantize._observers import (
    OBSERVERS,
    Observer,
    QuantSpec,
    create_observer,
    qparams_from_range,
    quant_range,
)
from slimkit.quantize._ptq import quantizable_layers
from slimkit.quantize._quantize import quantize
from slimkit.quantize._sensitivity import LayerSensitivity, sensitivity

__all__ = [
    "DEFAULT_QAT",
    "OBSERVERS",
    "QUANT_CLASSES",
    "DynamicInt8Options",
    "Int8Candidate",
    "Int8Selection",
    "LayerSensitivity",
    "Observer",
    "QuantConfig",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "StaticInt8Options",
    "create_observer",
    "default_int8_candidates",
    "fp16_onnx",
    "install_io_cast",
    "int8_candidates",
    "int8_dynamic_onnx",
    "int8_static_onnx",
    "is_quantized",
    "output_error",
    "qparams_from_range",
    "quant_range",
    "quantizable_layers",
    "quantize",
    "sensitivity",
    "to_dtype",
]
