"""OpenVINO behind slimkit's :class:`~slimkit.measure.Runner` interface.

An :class:`OpenVinoRunner` compiles one model file with OpenVINO's CPU plugin: an ``.onnx`` file
(fp32, fp16 or int8 QDQ) or OpenVINO's own IR (``.xml`` + ``.bin``, which
:meth:`OpenVinoRunner.from_torch` writes from a PyTorch module through
``openvino.convert_model``). Threads, the performance hint and the inference precision are set
explicitly: OpenVINO runs fp32 models in bf16 by default on CPUs with bf16 support, so the
precision that ran is read back from the compiled model (:attr:`OpenVinoRunner.precision`), and
asking for bf16 on a CPU without it is an error instead of a silent fp32 run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from slimkit._optional import require
from slimkit.compile._backend_common import (
    as_config,
    check_calibration,
    check_threads,
    dynamic_batch_example,
    files_size,
    onnx_parameter_counts,
    remove_folder,
)
from slimkit.config import Config
from slimkit.errors import ConfigError
from slimkit.measure._runner import Runner, RunnerSpec, register_runner

__all__ = ["OpenVinoConfig", "OpenVinoRunner", "build_runner", "cpu_precisions", "nncf_int8"]

Precision = Literal["f32", "bf16"]
PerformanceHint = Literal["latency", "throughput"]

# Element type names OpenVINO reports for INFERENCE_PRECISION_HINT, in slimkit's spelling.
_PRECISION_NAMES = {"f32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16",
                    "f16": "f16", "float16": "f16"}  # fmt: skip
# OPTIMIZATION_CAPABILITIES entry that says a precision has native kernels.
_CAPABILITY = {"f32": "FP32", "bf16": "BF16"}


class OpenVinoConfig(Config):
    """Options of the OpenVINO backend.

    Attributes:
        threads: ``INFERENCE_NUM_THREADS`` of the CPU plugin.
        precision: ``INFERENCE_PRECISION_HINT``: ``f32``, or ``bf16`` (an error on a CPU whose
            OpenVINO capabilities lack BF16, since OpenVINO would silently run f32). Int8
            (QDQ) models run their quantized layers in int8 either way.
        hint: ``PERFORMANCE_HINT``: ``latency`` (one stream) or ``throughput`` (streams sized
            by OpenVINO; a synchronous runner gains from it only with several threads).
        source: What to compile: ``onnx`` (the ONNX file the backend is given), ``torch``
            (the PyTorch module, through ``openvino.convert_model``), or ``auto`` (the ONNX
            file when there is one, else the module).

    Example:
        >>> OpenVinoConfig(precision="bf16").hint
        'latency'
    """

    threads: int = Field(default=1, ge=1)
    precision: Precision = "f32"
    hint: PerformanceHint = "latency"
    source: Literal["auto", "onnx", "torch"] = "auto"


def cpu_precisions() -> list[str]:
    """The inference precisions OpenVINO's CPU plugin supports on this machine.

    From the plugin's ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ``INT8``, ...), in
    slimkit's spelling (``f32``, ``bf16``).

    Example:
        >>> "f32" in cpu_precisions()  # doctest: +SKIP
        True
    """
    core = _core()
    capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return [name for name, cap in _CAPABILITY.items() if cap in capabilities]


@register_runner("openvino")
class OpenVinoRunner(Runner):
    """Runs an ONNX file or an OpenVINO IR with OpenVINO's CPU plugin.

    Args:
        path: An ``.onnx`` file or an OpenVINO IR ``.xml`` (with its ``.bin`` beside it). One
            input; the first output is returned.
        threads: ``INFERENCE_NUM_THREADS``; set it to the measurement's thread count, since
            OpenVINO has its own thread pool that torch's setting does not reach.
        precision: ``INFERENCE_PRECISION_HINT``, ``"f32"`` or ``"bf16"``.
        hint: ``PERFORMANCE_HINT``, ``"latency"`` or ``"throughput"``.

    Attributes:
        precision: The inference precision the compiled model reports (what really runs).

    Raises:
        ConfigError: No such file, a bad setting, bf16 on a CPU without bf16 support, or a
            model OpenVINO cannot read or compile (its message names the failing operation).

    Example:
        >>> runner = OpenVinoRunner("model.onnx", threads=1)  # doctest: +SKIP
        >>> runner.precision  # doctest: +SKIP
        'f32'
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        precision: Precision = "f32",
        hint: PerformanceHint = "latency",
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no model file at {self.path}.")
        if self.path.suffix not in (".onnx", ".xml"):
            raise ConfigError(
                f"OpenVinoRunner runs .onnx files or OpenVINO IR (.xml), got {self.path.name}."
            )
        self.threads = check_threads(threads)
        if precision not in _CAPABILITY:
            raise ConfigError(f"precision must be 'f32' or 'bf16', got {precision!r}.")
        if hint not in ("latency", "throughput"):
            raise ConfigError(f"hint must be 'latency' or 'throughput', got {hint!r}.")
        self.hint: PerformanceHint = hint
        self.requested_precision: Precision = precision
        core = _core()
        _check_precision_supported(core, precision)
        self._owned_dir: Path | None = None
        self._module: nn.Module | None = None
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:
            raise ConfigError(f"OpenVINO cannot read {self.path}: {_first_line(exc)}") from exc
        if len(model.inputs) != 1:
            raise ConfigError(
                f"{self.path.name} has {len(model.inputs)} inputs; slimkit runners feed one "
                "tensor (export the model with a single input)."
            )
        properties = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": hint.upper(),
            "INFERENCE_PRECISION_HINT": precision,
        }
        try:
            self.compiled = core.compile_model(model, "CPU", properties)
        except Exception as exc:
            raise ConfigError(
                f"OpenVINO's CPU plugin cannot compile {self.path.name}: {_first_line(exc)}"
            ) from exc
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision: str = _precision_name(ran)
        self.input_dtype = np.dtype(self.compiled.input(0).element_type.to_dtype())
        self._request = self.compiled.create_infer_request()

    @classmethod
    def from_torch(
        cls,
        module: nn.Module,
        example_inputs: Tensor,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        dynamic_batch: bool = True,
        **kwargs: Any,
    ) -> OpenVinoRunner:
        """Convert a PyTorch module with ``openvino.convert_model`` and run the IR.

        Args:
            module: The model; converted in eval mode (its mode is restored).
            example_inputs: One batch, used to trace the module.
            out_dir: Where the IR (``model.xml`` + ``model.bin``, fp32 weights) is written; by
                default a temporary folder that :meth:`close` deletes.
            dynamic_batch: Keep the batch dimension dynamic (else the example's batch only).
            **kwargs: ``threads``, ``precision``, ``hint`` as for the constructor.
        """
        ov = require("openvino", "openvino", "the OpenVINO runner")
        if not isinstance(module, nn.Module):
            raise ConfigError(f"from_torch converts an nn.Module, got {type(module).__name__}.")
        owned = out_dir is None
        folder = Path(tempfile.mkdtemp(prefix="slimkit-ov-") if owned else out_dir)  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        was_training = module.training
        module.eval()
        try:
            model = _convert(ov, module, example_inputs, dynamic_batch)
            xml = folder / "model.xml"
            # compress_to_fp16=False: save_model would otherwise store the weights as fp16.
            ov.save_model(model, str(xml), compress_to_fp16=False)
            runner = cls(xml, **kwargs)
        except ConfigError:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        except Exception as exc:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError(
                f"openvino.convert_model failed on {type(module).__name__}: {_first_line(exc)}"
            ) from exc
        finally:
            module.train(was_training)
        runner._owned_dir = folder if owned else None
        runner._module = module
        return runner

    def __call__(self, inputs: Tensor) -> Tensor:
        if self._request is None:
            raise ConfigError(f"this runner of {self.path.name} was closed; open a new one.")
        array = np.ascontiguousarray(inputs.detach().cpu().numpy())
        if array.dtype != self.input_dtype:
            array = array.astype(self.input_dtype)
        out = self._request.infer({0: array})
        return torch.from_numpy(np.asarray(out[0]).copy())

    def artifact_files(self) -> list[Path]:
        """The files of the model this runner compiled (``.onnx``, or ``.xml`` + ``.bin``)."""
        if self.path.suffix == ".xml":
            return [self.path, self.path.with_suffix(".bin")]
        return [self.path, *_onnx_external_files(self.path)]

    def artifact_size_bytes(self) -> int:
        return files_size(self.artifact_files())

    def parameter_counts(self) -> tuple[int, int]:
        """From the PyTorch module when converted from one, else from the ONNX initializers."""
        if self._module is not None:
            return super().parameter_counts()
        if self.path.suffix == ".onnx":
            return onnx_parameter_counts(self.path)
        raise NotImplementedError("parameter counts of an OpenVINO IR without its module")

    def torch_module(self) -> nn.Module | None:
        return self._module

    def child_spec(self) -> RunnerSpec:
        payload = {
            "path": str(self.path.resolve()),
            "threads": self.threads,
            "precision": self.requested_precision,
            "hint": self.hint,
        }
        return RunnerSpec(runner=self.name, module=__name__, payload=payload)

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> OpenVinoRunner:
        payload: dict[str, Any] = dict(spec.payload)
        return cls(payload.pop("path"), **payload)

    def close(self) -> None:
        self._request = None
        self.compiled = None
        remove_folder(self._owned_dir)
        self._owned_dir = None

    def __repr__(self) -> str:
        return (
            f"OpenVinoRunner({str(self.path)!r}, threads={self.threads}, "
            f"precision={self.precision!r}, hint={self.hint!r})"
        )


def build_runner(
    model: nn.Module,
    example_inputs: Tensor,
    onnx_path: Path | None,
    options: OpenVinoConfig | dict[str, Any] | None = None,
) -> OpenVinoRunner:
    """The OpenVINO runner of ``model`` for backend selection.

    Compiles ``onnx_path`` (an ``.onnx`` file, or an OpenVINO IR ``.xml``) when given
    (``source: auto`` or ``onnx``), else converts ``model``.

    Raises:
        MissingDependencyError: OpenVINO is not installed (one line with the install command).
        ConfigError: See :class:`OpenVinoRunner`.

    Example:
        >>> from slimkit.models import create_model
        >>> net = create_model("fmnist_tiny")
        >>> with build_runner(net, torch.zeros(2, 1, 28, 28), None) as r:  # doctest: +SKIP
        ...     r(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """
    config = as_config(options, OpenVinoConfig)
    require("openvino", "openvino", "the OpenVINO backend")
    kwargs = {"threads": config.threads, "precision": config.precision, "hint": config.hint}
    use_onnx = config.source == "onnx" or (config.source == "auto" and onnx_path is not None)
    if use_onnx:
        if onnx_path is None:
            raise ConfigError("OpenVinoConfig(source='onnx') needs an ONNX file; none was given.")
        return OpenVinoRunner(onnx_path, **kwargs)
    return OpenVinoRunner.from_torch(model, example_inputs, **kwargs)


def nncf_int8(
    onnx_path: str | os.PathLike[str],
    calibration_inputs: Tensor,
    out_xml: str | os.PathLike[str],
    *,
    transformer: bool | None = None,
) -> Path:
    """Post-training int8 of an fp32 ONNX model with NNCF, written as an OpenVINO IR.

    NNCF (OpenVINO's quantizer) calibrates on ``calibration_inputs`` (one sample at a time) and
    inserts int8 FakeQuantize operations that OpenVINO's CPU plugin runs with int8 kernels.
    Transformers get NNCF's transformer preset (softmax, layer norms and the residual adds stay in
    float, SmoothQuant on the MatMul inputs), which is what keeps their embeddings close to fp32.

    Args:
        onnx_path: The fp32 ONNX model (one input).
        calibration_inputs: Real samples, a few hundred at most (more only slow it down).
        out_xml: Where the IR goes (``.xml``, with its ``.bin`` beside it); both are written to
            temporary names first, so a failed run leaves nothing behind.
        transformer: Use the transformer preset; ``None`` decides by the graph (a Softmax or a
            layer normalization in it).

    Returns:
        ``out_xml``.

    Raises:
        MissingDependencyError: OpenVINO or NNCF is not installed.
        DataError: No calibration samples, samples of another shape, or NaN/inf in them.

    Example:
        >>> xml = nncf_int8("model.onnx", samples[:300], "model-int8.xml")  # doctest: +SKIP
        >>> OpenVinoRunner(xml, threads=1)  # doctest: +SKIP
    """
    ov = require("openvino", "openvino", "int8 with NNCF")
    nncf = require("nncf", "openvino", "int8 with NNCF")
    model = _core().read_model(str(onnx_path))
    dims = list(model.inputs[0].get_partial_shape())[1:]
    check_calibration(calibration_inputs, [d.get_length() if d.is_static else None for d in dims])
    if transformer is None:
        kinds = {op.get_type_name() for op in model.get_ops()}
        transformer = bool(kinds & {"Softmax", "MVN", "LayerNormalization"})
    samples = [np.ascontiguousarray(x.numpy()) for x in calibration_inputs.detach().cpu().split(1)]
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), **extra)
    out = Path(out_xml)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nncf-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        ov.save_model(quantized, str(staged), compress_to_fp16=False)
        # The .bin first: an .xml is only ever there with its weights.
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)
    return out


def _convert(ov: Any, module: nn.Module, example_inputs: Tensor, dynamic_batch: bool) -> Any:
    # torch.export first (slimkit's capture, no deprecated tracing); models it cannot capture
    # go through OpenVINO's TorchScript tracing.
    shape = [-1 if dynamic_batch else int(example_inputs.shape[0]), *example_inputs.shape[1:]]
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None
    try:
        example = dynamic_batch_example(example_inputs) if dynamic_batch else example_inputs
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    except Exception:
        with torch.inference_mode():
            return ov.convert_model(
                module, example_input=example_inputs, input=[ov.PartialShape(shape)]
            )
    model = ov.convert_model(program)
    model.reshape({model.inputs[0]: ov.PartialShape(shape)})  # only the batch stays dynamic
    return model


def _core() -> Any:
    ov = require("openvino", "openvino", "the OpenVINO runner")
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE: Any = None


def _check_precision_supported(core: Any, precision: Precision) -> None:
    capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if _CAPABILITY[precision] not in capabilities:
        raise ConfigError(
            f"OpenVINO's CPU plugin has no {precision} support on this CPU "
            f"({core.get_property('CPU', 'FULL_DEVICE_NAME')}, capabilities {capabilities}); "
            f"it would silently run f32. Use precision='f32'."
        )


def _precision_name(value: Any) -> str:
    text = str(value).lower()
    for key, name in _PRECISION_NAMES.items():
        if f"'{key}'" in text or text == key:
            return name
    return text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO's messages start with a source location; the last lines say what failed.
    return " ".join(lines[-3:]) if lines else type(exc).__name__


def _onnx_external_files(path: Path) -> list[Path]:
    onnx = require("onnx", "onnx", "reading an ONNX model")
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in init.external_data}
            locations.add(entries["location"])
    return [path.parent / loc for loc in sorted(locations)]
