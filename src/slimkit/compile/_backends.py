"""The registry of backends: how to turn a model into a :class:`~slimkit.measure.Runner`.

A backend is a named builder plus a check that says, in one line, why it cannot run here (a
library that is not installed, no C++ compiler). :func:`slimkit.compile.compile_model` builds
every available backend, checks its outputs against PyTorch and times them all in one run.

Backends that run ONNX share one export per model (:meth:`BuildContext.fp32_onnx`). When the
model was already lowered to an ONNX file (the int8 model of the ``quantize`` step), the
``*-int8`` backends run that file.

Example:
    >>> "onnxruntime" in list_backends()
    True
    >>> backend_unavailable("torch-eager") is None
    True
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from slimkit._optional import is_available
from slimkit.errors import ConfigError
from slimkit.measure._runner import Runner, TorchEagerRunner

__all__ = [
    "Backend",
    "BuildContext",
    "Precision",
    "backend_unavailable",
    "get_backend",
    "list_backends",
    "register_backend",
]

Precision = Literal["fp32", "bf16", "fp16", "int8"]


@dataclass
class BuildContext:
    """What a backend builder gets.

    Attributes:
        model: The model to compile (eval mode, inference passes applied).
        example_inputs: One real input batch.
        workdir: A folder for the backend's artifacts (ONNX, ``.pte``, compiled libraries).
        threads: Intra-op threads the runner must use.
        options: This backend's options from :class:`~slimkit.compile.CompileConfig`.
        lowered_onnx: An ONNX file the model was already lowered to (int8), if any.
        calibration: Real input samples for backends that quantize the model themselves.
    """

    model: nn.Module
    example_inputs: Tensor
    workdir: Path
    threads: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    lowered_onnx: Path | None = None
    calibration: Tensor | None = None
    _onnx: Path | None = None

    def fp32_onnx(self) -> Path:
        """The model exported to ONNX once (dynamic batch, checked against PyTorch)."""
        if self._onnx is None:
            from slimkit.compile._onnx import export_onnx

            self._onnx = export_onnx(self.model, self.example_inputs, self.workdir / "model.onnx")
        return self._onnx


Builder = Callable[[BuildContext], Runner]


@dataclass(frozen=True)
class Backend:
    """A registered backend: its builder, what it needs, and the precision it computes in."""

    name: str
    build: Builder
    precision: Precision
    description: str
    unavailable: Callable[[BuildContext | None], str | None]


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    *,
    precision: Precision = "fp32",
    description: str = "",
    needs: tuple[str, ...] = (),
    extra: str = "",
    unavailable: Callable[[BuildContext | None], str | None] | None = None,
) -> Callable[[Builder], Builder]:
    """Register ``builder(ctx) -> Runner`` as backend ``name``.

    Args:
        name: The backend's name (``--backend NAME``).
        precision: What it computes in; decides how its outputs are checked.
        description: One line for the report.
        needs: Importable modules it requires; a missing one skips the backend with the
            ``pip install 'slimkit[extra]'`` hint.
        extra: The slimkit extra that installs ``needs``.
        unavailable: Any further check: returns a one-line reason, or ``None`` when it can run.
    """

    def check(ctx: BuildContext | None) -> str | None:
        for module in needs:
            if not is_available(module):
                hint = f"pip install 'slimkit[{extra}]'" if extra else f"pip install {module}"
                return f"{module} is not installed ({hint})"
        return unavailable(ctx) if unavailable is not None else None

    def deco(builder: Builder) -> Builder:
        _BACKENDS[name] = Backend(name, builder, precision, description, check)
        return builder

    return deco


def list_backends() -> list[str]:
    """Names of the registered backends, in registration order."""
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``."""
    if name not in _BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; registered backends: {list_backends()}.")
    return _BACKENDS[name]


def backend_unavailable(name: str, ctx: BuildContext | None = None) -> str | None:
    """Why backend ``name`` cannot run here (one line), or ``None`` when it can."""
    return get_backend(name).unavailable(ctx)


# ---- built-in backends -------------------------------------------------------------------------


@register_backend("torch-eager", description="PyTorch eager, fp32 (the reference)")
def _torch_eager(ctx: BuildContext) -> Runner:
    return TorchEagerRunner(ctx.model)


def _no_cxx(ctx: BuildContext | None) -> str | None:
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "torch.compile's inductor needs a C++ compiler (apt-get install g++)"
    return None


@register_backend(
    "torch-compile",
    description="torch.compile (inductor: generated C++ kernels), fp32",
    unavailable=_no_cxx,
)
def _torch_compile(ctx: BuildContext) -> Runner:
    from slimkit.compile._torch import TorchCompileRunner

    runner = TorchCompileRunner(ctx.model, **ctx.options)
    runner.warm_up(ctx.example_inputs)
    return runner


def _no_native_bf16(ctx: BuildContext | None) -> str | None:
    from slimkit.env import _has_flag, _read_cpuinfo

    flags = _read_cpuinfo()[1]
    if not (_has_flag("avx512_bf16", flags) or _has_flag("amx", flags)):
        return "this CPU has no bf16 instructions (AVX-512 BF16 or AMX); emulated bf16 is slow"
    return _no_cxx(ctx)


@register_backend(
    "torch-compile-bf16",
    precision="bf16",
    description="torch.compile (inductor) of the model in bfloat16, float32 in and out",
    unavailable=_no_native_bf16,
)
def _torch_compile_bf16(ctx: BuildContext) -> Runner:
    from slimkit.compile._torch import TorchCompileRunner
    from slimkit.quantize._float import to_dtype

    runner = TorchCompileRunner(to_dtype(ctx.model, torch.bfloat16), **ctx.options)
    runner.warm_up(ctx.example_inputs)
    return runner


@register_backend(
    "torch-aoti",
    description="AOTInductor: compiled ahead of time into a .pt2 package (no Python guards), fp32",
    unavailable=_no_cxx,
)
def _torch_aoti(ctx: BuildContext) -> Runner:
    from slimkit.compile._aoti import build_runner

    options = {"path": str(ctx.workdir / "model.aoti.pt2"), **ctx.options}
    return build_runner(ctx.model, ctx.example_inputs, None, options)


@register_backend(
    "onnxruntime",
    description="ONNX Runtime CPU, fp32, all graph optimizations (+ transformer fusions)",
    needs=("onnxruntime", "onnx"),
    extra="onnx",
)
def _onnxruntime(ctx: BuildContext) -> Runner:
    from slimkit.compile._ort import OnnxRuntimeRunner
    from slimkit.compile._ort_fusions import transformer_fused

    path = ctx.fp32_onnx()
    if ctx.options.get("transformer_fusions", True):
        path = transformer_fused(path, ctx.workdir / "model.ort.onnx") or path
    level = ctx.options.get("optimization_level", "all")
    return OnnxRuntimeRunner(path, threads=ctx.threads, optimization_level=level)


def _no_lowered(ctx: BuildContext | None) -> str | None:
    if ctx is not None and ctx.lowered_onnx is None:
        return "no int8 ONNX model to run (the quantize step makes one)"
    return None


@register_backend(
    "onnxruntime-int8",
    precision="int8",
    description="ONNX Runtime CPU on the quantize step's int8 ONNX model",
    needs=("onnxruntime",),
    extra="onnx",
    unavailable=_no_lowered,
)
def _onnxruntime_int8(ctx: BuildContext) -> Runner:
    from slimkit.compile._ort import OnnxRuntimeRunner

    assert ctx.lowered_onnx is not None  # checked by _no_lowered
    return OnnxRuntimeRunner(ctx.lowered_onnx, threads=ctx.threads)


def _with_threads(ctx: BuildContext, **defaults: Any) -> dict[str, Any]:
    return {"threads": ctx.threads, **defaults, **ctx.options}


@register_backend(
    "openvino",
    description="OpenVINO CPU plugin, fp32 (INFERENCE_PRECISION_HINT f32), from the ONNX export",
    needs=("openvino",),
    extra="openvino",
)
def _openvino(ctx: BuildContext) -> Runner:
    from slimkit.compile._openvino import build_runner

    return build_runner(ctx.model, ctx.example_inputs, ctx.fp32_onnx(), _with_threads(ctx))


def _no_bf16(ctx: BuildContext | None) -> str | None:
    from slimkit.compile._openvino import cpu_precisions

    if "BF16" not in {p.upper() for p in cpu_precisions()}:
        return "this CPU has no bf16 support in OpenVINO (needs AVX-512 BF16 or AMX)"
    return None


@register_backend(
    "openvino-bf16",
    precision="bf16",
    description="OpenVINO CPU plugin computing in bf16",
    needs=("openvino",),
    extra="openvino",
    unavailable=_no_bf16,
)
def _openvino_bf16(ctx: BuildContext) -> Runner:
    from slimkit.compile._openvino import build_runner

    options = _with_threads(ctx, precision="bf16")
    return build_runner(ctx.model, ctx.example_inputs, ctx.fp32_onnx(), options)


@register_backend(
    "openvino-int8",
    precision="int8",
    description="OpenVINO CPU plugin on the quantize step's int8 ONNX model",
    needs=("openvino",),
    extra="openvino",
    unavailable=_no_lowered,
)
def _openvino_int8(ctx: BuildContext) -> Runner:
    from slimkit.compile._openvino import build_runner

    return build_runner(ctx.model, ctx.example_inputs, ctx.lowered_onnx, _with_threads(ctx))


def _no_calibration(ctx: BuildContext | None) -> str | None:
    if ctx is not None and ctx.calibration is None:
        return (
            "no calibration inputs (pass compile_model(..., calibration_inputs=); the recipe "
            "step passes training samples)"
        )
    return None


@register_backend(
    "openvino-nncf-int8",
    precision="int8",
    description="OpenVINO CPU plugin, int8 from NNCF (calibrated here; transformer preset for "
    "transformers)",
    needs=("openvino", "nncf"),
    extra="openvino",
    unavailable=_no_calibration,
)
def _openvino_nncf_int8(ctx: BuildContext) -> Runner:
    from slimkit.compile._openvino import build_runner, nncf_int8

    assert ctx.calibration is not None  # checked by _no_calibration
    xml = nncf_int8(ctx.fp32_onnx(), ctx.calibration, ctx.workdir / "model-nncf-int8.xml")
    return build_runner(ctx.model, ctx.example_inputs, xml, _with_threads(ctx))


@register_backend(
    "executorch",
    description="ExecuTorch with the XNNPACK delegate (a .pte file, the on-device route), fp32",
    needs=("executorch",),
    extra="executorch",
)
def _executorch(ctx: BuildContext) -> Runner:
    from slimkit.compile._executorch import build_runner

    options = _with_threads(ctx, path=str(ctx.workdir / "model.pte"))
    return build_runner(ctx.model, ctx.example_inputs, None, options)


@register_backend(
    "executorch-int8",
    precision="int8",
    description="ExecuTorch/XNNPACK int8 (XNNPACK's PT2E quantizer, calibrated here), a .pte",
    needs=("executorch",),
    extra="executorch",
    unavailable=_no_calibration,
)
def _executorch_int8(ctx: BuildContext) -> Runner:
    from slimkit.compile._executorch import build_runner

    options = _with_threads(ctx, path=str(ctx.workdir / "model-int8.pte"), int8=True)
    return build_runner(ctx.model, ctx.example_inputs, None, options, ctx.calibration)


@register_backend(
    "tvm",
    description="Apache TVM (Relax, LLVM for this CPU), tuned by MetaSchedule within a budget",
    needs=("tvm",),
    extra="tvm",
)
def _tvm(ctx: BuildContext) -> Runner:
    from slimkit.compile._tvm import build_runner

    options = _with_threads(ctx, out_dir=str(ctx.workdir / "tvm"))
    return build_runner(ctx.model, ctx.example_inputs, None, options)
