"""Per-layer sensitivity to quantization, and mixed precision under an accuracy budget.

Both measure on *held-out* training samples (drawn after the calibration samples from the same
permutation, so they never overlap), with labels: the accuracy drop and the output MSE against
the float model. The test split is not used, so the final test accuracy stays an unbiased
measure of the chosen assignment. Training samples a model has learned can hide part of a drop
that unseen samples would show; the output MSE, which needs no labels, ranks layers too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit._runtime import log
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.quantize._config import QuantConfig
from slimkit.quantize._ptq import Calibrated, calibrate, calibration_data

__all__ = ["LayerSensitivity", "mixed_precision", "sensitivity"]


@dataclass(frozen=True)
class LayerSensitivity:
    """The error of quantizing only one layer (all others in float).

    Attributes:
        layer: Module path.
        kind: Its class (``Conv2d``, ``Linear``).
        accuracy: Top-1 accuracy on the validation samples with only this layer quantized.
        accuracy_drop: Float accuracy minus ``accuracy`` (a fraction; negative: it gained).
        output_mse: Mean squared difference of the outputs (logits) to the float model's.
    """

    layer: str
    kind: str
    accuracy: float
    accuracy_drop: float
    output_mse: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sensitivity(
    model: nn.Module,
    config: QuantConfig,
    data: DataSplits,
    example_inputs: Tensor | None = None,
) -> list[LayerSensitivity]:
    """Quantize each layer alone and measure the damage, one row per quantizable layer.

    Calibration runs once (``config.calibration_samples`` training samples); every layer is
    then measured on ``config.validation_samples`` further training samples.

    Raises:
        ConfigError: ``config`` is not an int8 configuration.
        DataError: see :func:`~slimkit.quantize.quantize`.

    Example:
        >>> from slimkit.data import DataConfig, load_dataset
        >>> from slimkit.models import create_model
        >>> data = load_dataset(DataConfig(train_subset=300, test_subset=10))  # doctest: +SKIP
        >>> rows = sensitivity(create_model("fmnist_tiny"),
        ...                    QuantConfig(calibration_samples=100), data)  # doctest: +SKIP
        >>> [row.layer for row in rows]  # doctest: +SKIP
        ['0', '3', '6', '11']
    """
    _require_int8(config)
    samples = calibration_data(model, config, data, example_inputs, need_validation=True)
    calibrated = calibrate(model, config, samples.calibration, samples.example)
    return layer_sensitivity(calibrated, samples.validation_inputs, samples.validation_labels)


def _require_int8(config: QuantConfig) -> None:
    if config.dtype != "int8":
        raise ConfigError(f"sensitivity measures int8 layers; dtype is {config.dtype!r}.")


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """The model's outputs on ``inputs``, in eval mode, batch by batch."""
    model.eval()
    return torch.cat([model(batch).float() for batch in inputs.split(batch_size)])


def layer_sensitivity(
    calibrated: Calibrated, inputs: Tensor, labels: Tensor
) -> list[LayerSensitivity]:
    """:func:`sensitivity` on an already calibrated model."""
    reference = predict(calibrated.model, inputs)
    float_accuracy = _accuracy(reference, labels)
    rows = []
    for name in calibrated.layers:
        outputs = predict(calibrated.build([name]), inputs)
        accuracy = _accuracy(outputs, labels)
        rows.append(
            LayerSensitivity(
                layer=name,
                kind=type(calibrated.model.get_submodule(name)).__name__,
                accuracy=accuracy,
                accuracy_drop=float_accuracy - accuracy,
                output_mse=float(((outputs - reference) ** 2).mean()),
            )
        )
    return rows


def mixed_precision(
    calibrated: Calibrated, inputs: Tensor, labels: Tensor, budget: float
) -> tuple[nn.Module, dict[str, Any]]:
    """Quantize every layer, then put the most sensitive back in float until the drop fits.

    Layers are restored in order of their own sensitivity (accuracy drop, then output MSE), one
    at a time, re-measuring the whole model after each. Then, toward the fastest assignment,
    each restored layer is tried in int8 again, the most MACs first (the largest int8 gain),
    and stays int8 if the budget still holds: a layer restored early may be unnecessary once
    later ones are float. Returns the model and a record of the search.
    """
    float_accuracy = _accuracy(predict(calibrated.model, inputs), labels)

    def measure(layers: list[str]) -> tuple[nn.Module, float]:
        trial = calibrated.build(layers)
        return trial, float_accuracy - _accuracy(predict(trial, inputs), labels)

    quantized = list(calibrated.layers)
    model, drop = measure(quantized)
    steps: list[dict[str, Any]] = [{"float_layers": [], "accuracy_drop": drop}]
    kept: list[dict[str, Any]] = []
    if drop > budget:
        ranked = sorted(
            layer_sensitivity(calibrated, inputs, labels),
            key=lambda r: (r.accuracy_drop, r.output_mse),
            reverse=True,
        )
        for row in ranked:
            if drop <= budget:
                break
            quantized.remove(row.layer)
            model, drop = measure(quantized)
            kept.append({
                **row.to_dict(),
                "reason": f"most sensitive left (alone: accuracy drop {row.accuracy_drop:.2%}, "
                          f"output MSE {row.output_mse:.3g}); the model's drop was above the "
                          f"budget {budget:.2%}",
            })  # fmt: skip
            steps.append({"float_layers": [k["layer"] for k in kept], "accuracy_drop": drop})
    if kept and drop <= budget:
        macs = layer_macs(calibrated.model, [k["layer"] for k in kept], inputs[:1])
        for entry in sorted(kept, key=lambda k: macs[k["layer"]], reverse=True):
            trial, trial_drop = measure([*quantized, entry["layer"]])
            if trial_drop <= budget:
                quantized.append(entry["layer"])
                kept.remove(entry)
                model, drop = trial, trial_drop
                steps.append({"float_layers": [k["layer"] for k in kept], "accuracy_drop": drop,
                              "requantized": entry["layer"]})  # fmt: skip
    log(f"quantize: mixed precision kept {len(kept)} layer(s) in float; accuracy drop "
        f"{drop:.2%} on {len(labels)} held-out samples (budget {budget:.2%})")  # fmt: skip
    record = {
        "budget": budget,
        "validation_samples": len(labels),
        "float_accuracy": float_accuracy,
        "accuracy_drop": drop,
        "met": drop <= budget,
        "float_layers": kept,
        "steps": steps,
    }
    return model, record


@torch.no_grad()
def layer_macs(model: nn.Module, names: list[str], example: Tensor) -> dict[str, int]:
    """Multiply-accumulates of each named Conv/Linear layer for one ``example`` batch."""
    macs: dict[str, int] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def hook(mod: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
            weight = mod.weight
            per_output = weight[0].numel()  # in_channels/groups x kernel, or in_features
            macs[name] = int(out.numel() * per_output)

        hooks.append(module.register_forward_hook(hook))
    try:
        model.eval()(example)
    finally:
        for handle in hooks:
            handle.remove()
    return {name: macs.get(name, 0) for name in names}


def _accuracy(outputs: Tensor, labels: Tensor) -> float:
    return float((outputs.argmax(-1) == labels).float().mean()) if len(labels) else float("nan")
