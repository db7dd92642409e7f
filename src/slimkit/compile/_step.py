"""The ``compile`` recipe step: inference passes, then the fastest faithful backend, measured here.

Example recipe::

    steps:
      - train: {epochs: 3}
      - quantize: {dtype: int8}
      - compile: {backend: auto, batch_sizes: [1, 64]}

After ``quantize`` (int8 on ONNX Runtime), its int8 ONNX model joins the candidates as the
``*-int8`` backends, checked by accuracy on held-out test samples, and the float backends
compile the float model from before ``quantize``. The step's model is the
PyTorch model after the passes, also written as ``compiled/model.pt2`` (a ``torch.export``
program with a dynamic batch axis, for users who stay in PyTorch); the report measures the
chosen backend's runner against PyTorch eager on the same model, and the step's info holds the
whole backend table.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from slimkit.compile._ort import OnnxRuntimeRunner
from slimkit.compile._program import write_program
from slimkit.compile._select import CompileConfig, compile_model
from slimkit.measure._runner import TorchEagerRunner
from slimkit.recipe import StepContext, StepOutput, register_step

__all__ = ["CompileStepConfig", "compile_step"]


class CompileStepConfig(CompileConfig):
    """:class:`~slimkit.compile.CompileConfig` plus the data every backend is checked on.

    Attributes:
        check_samples: Test samples every backend's predictions are compared on (accuracy for
            int8/bf16 backends, max error for fp32 ones).
        calibration_samples: Training samples given to the backends that quantize the model
            themselves (``executorch-int8``).
        write_program: Also write the PyTorch model as ``compiled/model.pt2``
            (:func:`~slimkit.compile.export_program`); a model that ``torch.export`` cannot
            capture gets the reason in the step's info instead.

    Example:
        >>> CompileStepConfig(backend="onnxruntime").check_samples
        2000
    """

    check_samples: Annotated[int, Field(ge=1)] = 2000
    calibration_samples: Annotated[int, Field(ge=1)] = 512
    write_program: bool = True


_STEP_ONLY = {"check_samples", "calibration_samples", "write_program"}


@register_step("compile", CompileStepConfig)
def compile_step(model: nn.Module, config: CompileStepConfig, ctx: StepContext) -> StepOutput:
    """Compile ``model`` for this machine: passes, every backend checked and timed, the fastest."""
    inputs = ctx.data.test_inputs[: config.check_samples]
    labels = ctx.data.test_labels[: config.check_samples]
    lowered = ctx.artifact_before
    if isinstance(lowered, OnnxRuntimeRunner) and ctx.models_before[-1][0] == "quantize":
        # The quantize step's module simulates int8 (fake-quant); the float backends compile
        # the float model before it, and its real int8 model joins as the *-int8 backends.
        model = ctx.models_before[-1][1]
    result = compile_model(
        model,
        CompileConfig(**config.model_dump(exclude=_STEP_ONLY)),
        ctx.data.test_inputs[:1],
        check_inputs=inputs,
        check_labels=labels,
        lowered_onnx=lowered.path if isinstance(lowered, OnnxRuntimeRunner) else None,
        calibration_inputs=ctx.data.calibration_inputs(config.calibration_samples),
        workdir=ctx.step_dir / "compiled",
    )
    info = result.to_dict()
    if config.write_program:
        info["exported_program"] = write_program(result.model, inputs[:2], result.workdir)
    return StepOutput(
        result.model, info, artifact=result.runner, reference=TorchEagerRunner(result.model)
    )
