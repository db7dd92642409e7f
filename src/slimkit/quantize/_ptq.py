"""Post-training quantization: check the data, fold, calibrate, swap layers for fake-quant ones.

The steps are separate so that sensitivity analysis and mixed precision calibrate once and then
build many variants (each a copy of the folded float model with some layers swapped).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from slimkit._runtime import log
from slimkit.compile import FoldedPair, fold_batchnorm
from slimkit.data import DataSplits
from slimkit.errors import ConfigError, DataError
from slimkit.models import ModelSpec, model_info
from slimkit.quantize._config import QuantConfig
from slimkit.quantize._fake import QUANT_CLASSES
from slimkit.quantize._observers import Observer, create_observer

__all__ = [
    "Calibrated",
    "CalibrationData",
    "calibrate",
    "calibration_data",
    "prepare",
    "quantizable_layers",
]

_LAYER_CLASSES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d),
    "linear": (nn.Linear,),
}


def quantizable_layers(model: nn.Module, config: QuantConfig | None = None) -> list[str]:
    """Names of the layers :func:`~slimkit.quantize.quantize` turns into int8, in order.

    Exactly ``Conv1d``, ``Conv2d`` and ``Linear`` modules of ``config.layer_types`` (subclasses
    such as attention's output projection, whose weight is read directly, are left alone), minus
    ``config.skip``.

    Raises:
        ConfigError: a ``skip`` entry matches no module, or no layer is left.

    Example:
        >>> from slimkit.models import create_model
        >>> quantizable_layers(create_model("fmnist_tiny"), QuantConfig(skip=("11",)))
        ['0', '3', '6']
    """
    config = config or QuantConfig()
    modules = dict(model.named_modules())
    names = [name for name in modules if name]
    for pattern in config.skip:
        if not any(_matches(name, pattern) for name in names):
            close = difflib.get_close_matches(pattern, names, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(
                f"skip: no module of the model is called {pattern!r}{hint}; its modules are "
                f"{', '.join(names[:20])}{', ...' if len(names) > 20 else ''}."
            )
    classes = {c for t in config.layer_types for c in _LAYER_CLASSES[t]}
    layers = [n for n, m in modules.items() if type(m) in classes]
    chosen = [n for n in layers if not any(_matches(n, p) for p in config.skip)]
    if not chosen:
        raise ConfigError(
            f"nothing to quantize: the model has {len(layers)} layer(s) of types "
            f"{list(config.layer_types)} ({', '.join(layers) or 'none'}) and skip leaves none."
        )
    return chosen


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


@dataclass(frozen=True)
class CalibrationData:
    """The checked samples: calibration inputs and held-out validation samples (may be empty)."""

    calibration: Tensor
    validation_inputs: Tensor
    validation_labels: Tensor

    @property
    def example(self) -> Tensor:
        return self.calibration[:1]


def calibration_data(
    model: nn.Module,
    config: QuantConfig,
    data: DataSplits | None,
    example_inputs: Tensor | None = None,
    *,
    need_validation: bool = False,
) -> CalibrationData:
    """Draw and check the calibration (and validation) samples, before any work is done.

    Calibration takes ``config.calibration_samples`` random training samples (the ones
    :meth:`~slimkit.data.DataSplits.calibration_inputs` gives for ``config.seed``); validation
    the next ``config.validation_samples`` of the same permutation, so the two never overlap.

    Raises:
        ConfigError: no ``data``.
        DataError: the training split is empty, holds NaN or infinite values, its samples do
            not have the model's input shape, or nothing is left for validation.
    """
    if data is None:
        raise ConfigError(
            "quantize needs data= (a DataSplits, e.g. slimkit.data.load_dataset('fashion-mnist')) "
            "to calibrate on: int8 static, qat and accuracy_budget measure real samples."
        )
    inputs, labels = data.train_inputs, data.train_labels
    if len(inputs) == 0:
        raise DataError(
            f"the calibration data is empty: data {data.name!r} has no training samples; "
            "calibrate on a data set with at least a few hundred real samples."
        )
    if not inputs.is_floating_point():
        raise DataError(
            f"calibration samples must be floating point (normalized model inputs), got "
            f"{inputs.dtype}; normalize them as for training."
        )
    expected = _input_shape(model, example_inputs)
    if expected is not None and tuple(inputs.shape[1:]) != tuple(expected):
        raise DataError(
            f"calibration samples have shape {tuple(inputs.shape[1:])} but the model takes "
            f"{tuple(expected)} per sample: calibrate on the data the model was trained for "
            "(the same resolution and channels)."
        )
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(config.seed))
    count = min(config.calibration_samples, len(inputs))
    if count < config.calibration_samples:
        log(f"quantize: only {count} training samples, fewer than calibration_samples "
            f"({config.calibration_samples}); calibrating on all of them")  # fmt: skip
    calibration = inputs[order[:count]]
    _check_finite(calibration, order[:count], "calibration")
    held_out = order[count : count + config.validation_samples]
    if need_validation and len(held_out) == 0:
        raise DataError(
            f"no samples left to measure the accuracy drop on: all {len(inputs)} training "
            f"samples calibrate; lower calibration_samples ({config.calibration_samples}) or "
            "give more data."
        )
    validation = inputs[held_out]
    if need_validation:
        _check_finite(validation, held_out, "validation")
    return CalibrationData(calibration, validation, labels[held_out])


def _check_finite(samples: Tensor, index: Tensor, what: str) -> None:
    bad = ~torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)
    if bool(bad.any()):
        where = index[bad][:5].tolist()
        raise DataError(
            f"{int(bad.sum())} of the {len(samples)} {what} samples hold NaN or infinite values "
            f"(training samples {where}{', ...' if int(bad.sum()) > 5 else ''}): drop or repair "
            "them, or check the normalization."
        )


def _input_shape(model: nn.Module, example_inputs: Tensor | None) -> tuple[int, ...] | None:
    if example_inputs is not None:
        return tuple(example_inputs.shape[1:])
    spec = getattr(model, "slimkit_spec", None)
    if isinstance(spec, ModelSpec):
        return model_info(spec.name).input_shape
    return None


def example_for(model: nn.Module, data: DataSplits | None, example_inputs: Tensor | None) -> Tensor:
    """One input sample to capture the graph with: given, from the data, or from the registry."""
    if example_inputs is not None:
        return example_inputs[:1]
    if data is not None and len(data.train_inputs):
        return data.train_inputs[:1]
    shape = _input_shape(model, None)
    if shape is None:
        raise ConfigError(
            "quantize needs example_inputs= or data= to capture the model's graph (it was not "
            "built by slimkit.models.create_model, so its input shape is unknown)."
        )
    return torch.zeros(1, *shape)


@dataclass
class Calibrated:
    """A folded float model with the quantization parameters of its layers, ready to build.

    Attributes:
        model: The float model after folding (eval mode); :meth:`build` copies it.
        layers: The quantizable layers, in order.
        weights: Per layer, the weights' ``(scale, zero_point)``.
        inputs: Per layer, its input's ``(scale, zero_point)``; empty for dynamic quantization.
        config: The configuration they follow.
        folded: The batch norms folded, as ``(layer, norm)`` paths.
        unseen: Layers that calibration never ran (left in float).
    """

    model: nn.Module
    layers: list[str]
    weights: dict[str, tuple[Tensor, Tensor]]
    inputs: dict[str, tuple[Tensor, Tensor]]
    config: QuantConfig
    folded: list[tuple[str, str]] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)

    @property
    def dynamic(self) -> bool:
        return self.config.method == "dynamic"

    def build(self, layers: Iterable[str] | None = None) -> nn.Module:
        """A copy of the float model with ``layers`` (default: all) fake-quantized."""
        model = copy.deepcopy(self.model)
        chosen = set(self.layers if layers is None else layers)
        weight_range = self.config.weight_spec().qrange
        activation = self.config.activation_spec()
        for name in self.layers:
            if name not in chosen:
                continue
            module = model.get_submodule(name)
            weight_scale, weight_zero_point = self.weights[name]
            input_scale, input_zero_point = self.inputs.get(name, (None, None))
            quantized = QUANT_CLASSES[type(module)].from_float(
                module,
                weight_scale=weight_scale,
                weight_zero_point=weight_zero_point,
                weight_range=weight_range,
                input_scale=input_scale,
                input_zero_point=input_zero_point,
                input_range=activation.qrange,
                input_symmetric=activation.symmetric,
                dynamic=self.dynamic,
            )
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, quantized)
        return model


def prepare(
    model: nn.Module, config: QuantConfig, example: Tensor
) -> tuple[nn.Module, list[tuple[str, str]]]:
    """The float model to quantize (batch norms folded if ``config.fold_bn``) and the pairs."""
    if not config.fold_bn:
        return copy.deepcopy(model).eval(), []
    pairs: list[FoldedPair] = []
    folded = fold_batchnorm(model, example, folded=pairs).eval()
    return folded, [(p.layer, p.norm) for p in pairs]


def calibrate(
    model: nn.Module, config: QuantConfig, inputs: Tensor | None, example: Tensor
) -> Calibrated:
    """Fold, then compute every layer's weight qparams and (unless dynamic) input qparams.

    Input ranges come from forward passes over ``inputs`` (``config.calibration_batch_size``
    at a time) with one ``config.observer`` per layer watching the layer's input.
    """
    folded, pairs = prepare(model, config, example)
    layers = quantizable_layers(folded, config)
    observed: dict[str, tuple[Tensor, Tensor]] = {}
    unseen: list[str] = []
    if config.method != "dynamic":
        if inputs is None:
            raise ConfigError("static quantization needs calibration inputs.")
        observers = _observe_inputs(folded, layers, inputs, config)
        unseen = [n for n in layers if observers[n].batches == 0]
        if unseen:
            log(f"quantize: {len(unseen)} layer(s) never ran on the calibration data, kept in "
                f"float: {', '.join(unseen)}")  # fmt: skip
        layers = [n for n in layers if n not in unseen]
        observed = {n: observers[n].qparams() for n in layers}
    weights = {n: _weight_qparams(folded.get_submodule(n), config) for n in layers}
    return Calibrated(folded, layers, weights, observed, config, pairs, unseen)


def _options(name: str, config: QuantConfig) -> dict[str, Any]:
    if name == "percentile":
        return {"percentile": config.percentile}
    if name == "moving_average":
        return {"averaging_constant": config.averaging_constant}
    return {}


def _weight_qparams(module: nn.Module, config: QuantConfig) -> tuple[Tensor, Tensor]:
    observer = create_observer(
        config.weight_observer,
        config.weight_spec(),
        **_options(config.weight_observer, config),
    )
    observer.update(module.weight)
    return observer.qparams()


@torch.no_grad()
def _observe_inputs(
    model: nn.Module, layers: list[str], inputs: Tensor, config: QuantConfig
) -> dict[str, Observer]:
    spec = config.activation_spec()
    options = _options(config.observer, config)
    observers = {n: create_observer(config.observer, spec, **options) for n in layers}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(functools.partial(_watch, observers[n]))
        for n in layers
    ]
    try:
        for batch in inputs.split(config.calibration_batch_size):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return observers


def _watch(observer: Observer, module: nn.Module, args: tuple[Any, ...]) -> None:
    observer.update(args[0])
