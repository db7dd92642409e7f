"""The ``quantize`` recipe step: a quantized model and, for int8, the real int8 artifact.

Example recipe::

    steps:
      - train: {epochs: 3}
      - quantize: {dtype: int8, method: static, observer: percentile}

With ``runtime: onnxruntime`` (the default for int8) the float model is exported to ONNX and
quantized with ONNX Runtime's own tools; every int8 format in ``candidates`` is built, checked
against the float model's predictions on held-out training samples and timed here, and the
fastest faithful one is kept as ``model.int8.onnx`` beside the float ``model.fp32.onnx``. The
report measures that int8 session, and its speed-up against the float model on ONNX Runtime in
the same run; the whole candidate table is in the step's info. The step's PyTorch model (saved
as safetensors) is the fake-quantized one of :func:`slimkit.quantize.quantize`.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from slimkit._io import atomic_path
from slimkit._optional import require
from slimkit.errors import ConfigError
from slimkit.quantize._config import QuantConfig
from slimkit.quantize._fake import QUANT_CLASSES
from slimkit.quantize._quantize import quantize
from slimkit.recipe import StepContext, StepOutput, register_step

__all__ = ["QuantizeStepConfig", "quantize_step"]

INT8_FILE = "model.int8.onnx"
FP32_FILE = "model.fp32.onnx"


class QuantizeStepConfig(QuantConfig):
    """:class:`~slimkit.quantize.QuantConfig` plus where the int8 model runs.

    Attributes:
        runtime: ``onnxruntime``: int8 through ONNX Runtime (real integer kernels), the format
            chosen by measurement; ``torch``: only the PyTorch model (simulated int8, or
            fp16/bf16 in eager mode); ``auto``: ``onnxruntime`` for int8, else ``torch``.
        candidates: Names of the int8 formats to try (see
            :func:`slimkit.quantize.default_int8_candidates`); default all of them.
        min_agreement: A format passes when its top-1 predictions agree with the float model's
            on at least this fraction of the held-out samples.
        eval_samples: Held-out training samples (after the calibration ones) for that check.

    Example:
        >>> QuantizeStepConfig(dtype="bf16").target_runtime
        'torch'
    """

    runtime: Literal["auto", "onnxruntime", "torch"] = "auto"
    candidates: tuple[str, ...] | None = None
    min_agreement: float = Field(default=0.99, gt=0, le=1)
    eval_samples: int = Field(default=1000, ge=1)

    @property
    def target_runtime(self) -> str:
        """``runtime`` with ``auto`` resolved."""
        if self.runtime != "auto":
            return self.runtime
        return "onnxruntime" if self.dtype == "int8" else "torch"

    @model_validator(mode="after")
    def _runtime_fits(self) -> QuantizeStepConfig:
        if self.runtime == "onnxruntime" and self.dtype != "int8":
            raise ValueError(f"runtime onnxruntime lowers int8 only; {self.dtype} runs in torch "
                             "(set runtime: torch)")  # fmt: skip
        lowered = self.target_runtime == "onnxruntime"
        if lowered and (self.skip or self.accuracy_budget is not None):
            raise ValueError("layers kept in float (skip, accuracy_budget) apply to the PyTorch "
                             "model only for now: set runtime: torch")  # fmt: skip
        return self


@register_step("quantize", QuantizeStepConfig)
def quantize_step(model: nn.Module, config: QuantizeStepConfig, ctx: StepContext) -> StepOutput:
    """Quantize the model (fp16, bf16, or int8 static/dynamic/QAT), int8 lowered to a runtime.

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("quantize").handler is quantize_step
        True
    """
    if config.target_runtime == "onnxruntime":  # fail before any work when it is missing
        require("onnxruntime", "onnx", "the quantize step's int8 lowering")
    qconfig = QuantConfig(**config.model_dump(include=set(QuantConfig.model_fields)))
    quantized = quantize(model, qconfig, ctx.data)
    info: dict[str, Any] = {"quantization": getattr(quantized, "slimkit_quantization", {})}
    if config.target_runtime == "torch":
        return StepOutput(quantized, info)
    return _lower_to_onnxruntime(model, quantized, config, ctx, info)


def _lower_to_onnxruntime(
    model: nn.Module,
    quantized: nn.Module,
    config: QuantizeStepConfig,
    ctx: StepContext,
    info: dict[str, Any],
) -> StepOutput:
    from slimkit.compile import OnnxRuntimeRunner, export_onnx
    from slimkit.quantize._lowering import default_int8_candidates, int8_candidates

    # QAT changed the weights: lower its float twin. Otherwise the float model itself (ONNX
    # Runtime's pre-processing folds the batch norms as the PyTorch side did).
    source = _float_copy(quantized) if config.method == "qat" else model
    data, timing = ctx.data, ctx.recipe.profile
    fp32 = export_onnx(source.eval(), data.example_input(1), ctx.step_dir / FP32_FILE)
    held_out = data.calibration_inputs(
        config.calibration_samples + config.eval_samples, config.seed
    )
    calibration = held_out[: config.calibration_samples]
    evaluation = held_out[config.calibration_samples :]
    if len(evaluation) == 0:
        raise ConfigError(
            f"no training samples are left after the {config.calibration_samples} calibration "
            "ones to check the int8 formats on; lower calibration_samples."
        )
    candidates = _chosen_candidates(default_int8_candidates(fp32), config.candidates)
    selection = int8_candidates(
        fp32, calibration, evaluation, ctx.step_dir / "int8-candidates",
        candidates=candidates, fidelity="agreement", min_fidelity=config.min_agreement,
        timing=timing,
    )  # fmt: skip
    info["int8_candidates"] = selection.to_dict()
    reference = OnnxRuntimeRunner(fp32, threads=timing.threads)
    if selection.best is None or selection.best.path is None:
        info["int8_note"] = (
            f"no int8 format kept {config.min_agreement:.1%} of the float model's predictions; "
            "the float ONNX model is measured instead."
        )
        return StepOutput(quantized, info, artifact=reference)
    best = ctx.step_dir / INT8_FILE
    _copy_atomic(selection.best.path, best)
    info["int8_format"] = selection.best.name
    if not selection.faster_than_fp32:
        info["int8_note"] = "the fastest faithful int8 format is not faster than fp32 here."
    artifact = OnnxRuntimeRunner(best, threads=timing.threads)
    return StepOutput(quantized, info, artifact=artifact, reference=reference)


def _float_copy(quantized: nn.Module) -> nn.Module:
    model = copy.deepcopy(quantized)
    for name, module in list(model.named_modules()):
        if isinstance(module, QUANT_CLASSES):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.to_float())
    return model


def _chosen_candidates(available: list[Any], names: tuple[str, ...] | None) -> list[Any]:
    if names is None:
        return available
    by_name = {c.name: c for c in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(
            f"unknown int8 candidate(s) {unknown} for this model; choose from {sorted(by_name)}."
        )
    return [by_name[n] for n in names]


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
