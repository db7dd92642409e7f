"""The one verb: ``quantize(model, config, data)`` for fp16/bf16 and int8 static, dynamic, QAT."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from slimkit._runtime import log
from slimkit.data import DataSplits
from slimkit.quantize._config import QuantConfig
from slimkit.quantize._float import FLOAT_DTYPES, output_error, to_dtype
from slimkit.quantize._ptq import (
    CalibrationData,
    calibrate,
    calibration_data,
    example_for,
    quantizable_layers,
)
from slimkit.quantize._qat import quantization_aware_training
from slimkit.quantize._sensitivity import mixed_precision

__all__ = ["quantize"]


def quantize(
    model: nn.Module,
    config: QuantConfig | None = None,
    data: DataSplits | None = None,
    example_inputs: Tensor | None = None,
) -> nn.Module:
    """Return a quantized copy of ``model``; the input model is not modified.

    - ``dtype: fp16 | bf16``: every floating tensor in that dtype; the root casts float inputs
      to it and outputs back to float32. With ``data`` (or ``example_inputs``) the output error
      against the float32 model is measured and recorded.
    - ``dtype: int8``, ``method: static``: batch norms folded, activation ranges calibrated on
      ``calibration_samples`` training samples, every quantizable layer (see
      :func:`quantizable_layers`) swapped for its fake-quantized twin
      (:class:`~slimkit.quantize.QuantConv2d`, ...). The result simulates the integer model in
      PyTorch: it is what accuracy checks, QAT and the ONNX lowering start from.
    - ``method: dynamic``: the same layers, with each batch's own activation range (no
      calibration, ``data`` optional).
    - ``method: qat``: static, then fine-tuned on ``data`` with ``config.qat``.
    - ``accuracy_budget``: mixed precision, the most sensitive layers back in float until the
      accuracy drop on held-out training samples is within the budget.

    The result carries ``slimkit_quantization``, a dict of what was done: the quantized and the
    float layers (with the reason each stayed float), the folded batch norms, the output error
    against the float model on the calibration samples, and for QAT and mixed precision their
    records.

    Args:
        model: A float model (trained).
        config: What to do (default: int8 static, min-max).
        data: Training samples calibrate, held-out training samples measure the accuracy
            budget, QAT trains on the training split.
        example_inputs: An input batch, to check the data's shape against and to capture the
            graph with (default: the model's registered input shape).

    Raises:
        ConfigError: ``data`` is missing where it is needed, a ``skip`` entry matches nothing.
        DataError: the calibration data is empty, holds NaN/inf, or has the wrong shape
            (checked before any work).

    Example:
        >>> import torch
        >>> from slimkit.models import create_model
        >>> model = create_model("fmnist_tiny").eval()
        >>> q = quantize(model, QuantConfig(method="dynamic"))
        >>> type(q[0]).__name__, q.slimkit_quantization["quantized_layers"]
        ('QuantConv2d', ['0', '3', '6', '11'])
        >>> x = torch.randn(2, 1, 28, 28)
        >>> bool((q(x) - model(x)).abs().max() < 0.1)
        True
    """
    config = config or QuantConfig()
    if config.dtype in FLOAT_DTYPES:
        return _to_float(model, config, data, example_inputs)
    samples: CalibrationData | None = None
    needs_data = config.method != "dynamic" or config.accuracy_budget is not None
    if needs_data or data is not None:
        samples = calibration_data(
            model, config, data, example_inputs,
            need_validation=config.accuracy_budget is not None,
        )  # fmt: skip
    example = samples.example if samples is not None else example_for(model, data, example_inputs)
    calibrated = calibrate(model, config, None if samples is None else samples.calibration, example)
    record: dict[str, Any] = {
        "dtype": "int8",
        "method": config.method,
        "observer": None if config.method == "dynamic" else config.observer,
        "weight_observer": config.weight_observer,
        "weight_bits": config.weight_bits,
        "activation_bits": config.activation_bits,
        "per_channel": config.per_channel,
        "calibration_samples": len(samples.calibration) if samples and calibrated.inputs else 0,
        "folded_batchnorms": [list(pair) for pair in calibrated.folded],
    }
    float_layers = [
        {"layer": name, "reason": "skip"}
        for name in _all_layers(calibrated.model, config)
        if name not in calibrated.layers and name not in calibrated.unseen
    ] + [{"layer": name, "reason": "never ran on the calibration data"}
         for name in calibrated.unseen]  # fmt: skip
    if config.accuracy_budget is not None:
        assert samples is not None  # needs_data
        quantized, record["mixed_precision"] = mixed_precision(
            calibrated, samples.validation_inputs, samples.validation_labels,
            config.accuracy_budget,
        )  # fmt: skip
        float_layers += record["mixed_precision"]["float_layers"]
    else:
        quantized = calibrated.build()
    record["float_layers"] = float_layers
    kept = {entry["layer"] for entry in float_layers}
    record["quantized_layers"] = [n for n in calibrated.layers if n not in kept]
    if config.method == "qat":
        assert data is not None  # checked by calibration_data
        quantized, record["qat_history"] = quantization_aware_training(quantized, config, data)
    if samples is not None:
        record["output_error"] = output_error(model, quantized, samples.calibration)
    log(f"quantize: int8 {config.method}, {len(record['quantized_layers'])} layer(s) quantized, "
        f"{len(float_layers)} in float")  # fmt: skip
    quantized.slimkit_quantization = record
    return quantized.eval()


def _all_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    return quantizable_layers(model, config.model_copy(update={"skip": ()}))


def _to_float(
    model: nn.Module, config: QuantConfig, data: DataSplits | None, example_inputs: Tensor | None
) -> nn.Module:
    dtype = FLOAT_DTYPES[config.dtype]
    inputs = None
    if data is not None:
        inputs = calibration_data(model, config, data, example_inputs).calibration
    elif example_inputs is not None:
        inputs = example_inputs
    converted = to_dtype(model, dtype)
    record: dict[str, Any] = {"dtype": config.dtype, "method": None}
    if inputs is not None:
        record["output_error"] = error = output_error(model, converted, inputs)
        log(f"quantize: {config.dtype}: max abs output error {error['max_abs_error']:.3g}, "
            f"top-1 agreement {error['top1_agreement']:.2%} on {len(inputs)} samples")  # fmt: skip
    converted.slimkit_quantization = record
    return converted
