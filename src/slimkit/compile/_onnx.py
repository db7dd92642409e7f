"""ONNX export: dynamic batch (and sequence) axes, the ONNX checker, and a numerical check.

The default exporter is PyTorch's ``torch.export``-based one (``torch.onnx.export(...,
dynamo=True)``): it is PyTorch's default and maintained path, it shares slimkit's graph capture
(non-strict ``torch.export``, so ordinary Python in ``forward`` traces as in eager mode), it
exports the Hugging Face transformers with SDPA attention and dynamic sequence lengths, and its
onnxscript optimizer folds constants. The TorchScript exporter (``exporter="torchscript"``) is
kept as the alternative for models that ``torch.export`` cannot capture; PyTorch marks it
deprecated.

A file is only written when it passes ``onnx.checker`` and ONNX Runtime reproduces the PyTorch
outputs on the example inputs (and on a different batch size when the batch is dynamic); the
write is atomic, so a failed export never leaves a half-valid file behind.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from slimkit._io import atomic_path
from slimkit._optional import require
from slimkit.errors import ConfigError, SlimkitError
from slimkit.measure._runner import _as_tensor

__all__ = ["OnnxExportError", "export_onnx", "onnx_input_dtype"]

Exporter = Literal["dynamo", "torchscript"]

# ONNX tensor type strings, as ONNX Runtime names them, to numpy dtypes.
_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxExportError(SlimkitError, RuntimeError):
    """An export failed, or its ONNX model does not reproduce the PyTorch outputs."""


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[int, str] | None = None,
    input_name: str | None = None,
    output_name: str = "output",
    exporter: Exporter = "dynamo",
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    keep_debug_info: bool = False,
) -> Path:
    """Export ``model`` to an ONNX file, check it, and verify it against PyTorch.

    Args:
        model: The module to export; it is exported in eval mode and its mode is restored.
        example_inputs: One batch of real inputs (any batch size). Integer inputs of shape
            ``[batch, sequence]`` (token ids) get a dynamic sequence axis by default.
        path: Where to write the ``.onnx`` file (weights inside the file; written atomically).
        dynamic_batch: Make dim 0 (named ``batch``) dynamic.
        dynamic_axes: Other input dims to make dynamic, ``{dim: name}``; ``None`` picks
            ``{1: "sequence"}`` for 2-D integer inputs and nothing otherwise, ``{}`` none.
        input_name: Name of the graph input; default ``input_ids`` for integer inputs, else
            ``input``.
        output_name: Name of the (first) graph output.
        exporter: ``"dynamo"`` (``torch.export``-based, the default) or ``"torchscript"``.
        opset: ONNX opset; ``None`` takes the exporter's default.
        atol: Absolute tolerance of the check against PyTorch.
        rtol: Relative tolerance of the check against PyTorch.
        keep_debug_info: Keep the exporter's per-node debug metadata (source stack traces,
            module paths). It is dropped by default: it does not change what runs, and on a
            small CNN it is 3 % of the file (36 KB of a 1.2 MB model), which every derived
            artifact (int8, fp16) would carry too.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: The arguments are inconsistent (an axis outside the input, a name twice).
        OnnxExportError: The exporter failed, the checker rejected the model, or ONNX Runtime's
            outputs differ from PyTorch's beyond the tolerance (the message gives the maximum
            difference).

    Example:
        >>> import torch, tempfile, pathlib
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
        ...     export_onnx(net, torch.randn(2, 4), pathlib.Path(tmp) / "net.onnx").suffix
        '.onnx'
    """
    onnx = require("onnx", "onnx", "ONNX export")
    require("onnxruntime", "onnx", "checking an ONNX export")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export_onnx exports an nn.Module, got {type(model).__name__}.")
    if (
        not isinstance(example_inputs, Tensor)
        or example_inputs.dim() == 0
        or not len(example_inputs)
    ):
        raise ConfigError(
            "example_inputs must be a tensor holding at least one sample along dim 0."
        )
    axes = _dynamic_axes(example_inputs, dynamic_batch, dynamic_axes)
    name = input_name or ("input_ids" if _is_integer(example_inputs) else "input")
    target = Path(path)
    was_training = model.training
    model.eval()
    try:
        export_example = _widen(example_inputs, axes)
        with atomic_path(target) as tmp:
            _export(model, export_example, tmp, name, output_name, axes, exporter, opset)
            if not keep_debug_info:
                _strip_debug_info(tmp)
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as exc:
                raise OnnxExportError(
                    f"the ONNX checker rejected the exported model: {exc}"
                ) from exc
            _verify(model, tmp, _check_inputs(example_inputs, axes), atol, rtol)
    finally:
        model.train(was_training)
    return target


def onnx_input_dtype(type_string: str) -> Any:
    """The numpy dtype of an ONNX Runtime input type such as ``"tensor(float)"``."""
    try:
        return _ORT_TYPES[type_string]
    except KeyError:
        raise ConfigError(
            f"ONNX input type {type_string} is not supported; supported: {sorted(_ORT_TYPES)}."
        ) from None


def _is_integer(x: Tensor) -> bool:
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def _dynamic_axes(
    example: Tensor, dynamic_batch: bool, extra: Mapping[int, str] | None
) -> dict[int, str]:
    axes: dict[int, str] = {0: "batch"} if dynamic_batch else {}
    if extra is None:
        # Token ids: sequences come in any length, so the sequence dim is dynamic by default.
        extra = {1: "sequence"} if _is_integer(example) and example.dim() == 2 else {}
    for dim, axis_name in extra.items():
        if not 0 <= dim < example.dim():
            raise ConfigError(
                f"dynamic_axes names dim {dim}, but the inputs have {example.dim()} dims "
                f"(shape {tuple(example.shape)})."
            )
        if dim == 0 and dynamic_batch and axis_name != "batch":
            raise ConfigError("dim 0 is the dynamic batch; do not name it again in dynamic_axes.")
        axes[dim] = axis_name
    if len(set(axes.values())) != len(axes):
        raise ConfigError(f"dynamic axis names must differ, got {axes}.")
    return axes


def _widen(example: Tensor, axes: Mapping[int, str]) -> Tensor:
    # torch.export specializes dims of size 0 or 1 to constants; a dynamic dim needs >= 2.
    out = example
    for dim in axes:
        if out.shape[dim] < 2:
            reps = [1] * out.dim()
            reps[dim] = 2
            out = out.repeat(*reps)
    return out


def _check_inputs(example: Tensor, axes: Mapping[int, str]) -> list[Tensor]:
    """The example, and (for dynamic axes) a second input of other sizes along them."""
    checks = [example]
    if not axes:
        return checks
    other = example
    for dim in axes:
        size = other.shape[dim]
        if dim == 0:
            reps = [1] * other.dim()
            reps[0] = 2
            other = other.repeat(*reps)[: size + 1]  # one more sample than the example
        elif size > 1:
            other = other.narrow(dim, 0, math.ceil(size / 2))  # a shorter sequence
    checks.append(other.contiguous())
    return checks


def _export(
    model: nn.Module,
    example: Tensor,
    tmp: Path,
    input_name: str,
    output_name: str,
    axes: Mapping[int, str],
    exporter: Exporter,
    opset: int | None,
) -> None:
    try:
        if exporter == "dynamo":
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                # Named string axes become Dim.DYNAMIC and keep their names in the ONNX graph.
                dynamic_shapes=({dim: name for dim, name in axes.items()},) if axes else None,
                opset_version=opset,
                verbose=False,
            )
            # Weights inside the one file: the artifact's size on disk is the file's size.
            program.save(str(tmp), external_data=False)
        elif exporter == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # we chose it knowingly
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: dict(axes), output_name: {0: "batch"}}
                    if 0 in axes
                    else {input_name: dict(axes)},
                    opset_version=opset or 17,
                )
        else:
            raise ConfigError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}.")
    except ConfigError:
        raise
    except Exception as exc:
        missing = _missing_operator(exc)
        if missing:
            raise OnnxExportError(
                f"ONNX has no conversion for operator {missing}, which {type(model).__name__} "
                "uses: run this model on a PyTorch backend (torch-eager, torch-compile), or "
                "replace that operation in the model's forward."
            ) from exc
        raise OnnxExportError(
            f"the {exporter} ONNX exporter failed on {type(model).__name__} with inputs of shape "
            f"{tuple(example.shape)}: {type(exc).__name__}: {str(exc)[:2000]}"
        ) from exc


_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)'")


def _missing_operator(exc: BaseException) -> str | None:
    """The ATen/prims operator the exporter could not convert, if that is what failed."""
    seen: BaseException | None = exc
    while seen is not None:
        match = _NO_FUNCTION.search(str(seen))
        if match:
            return match.group(1)
        seen = seen.__cause__ or seen.__context__
    return None


def _strip_debug_info(path: Path) -> None:
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load(str(path))
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        del value.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    onnx.save(model, str(path))


@torch.inference_mode()
def _verify(
    model: nn.Module, onnx_path: Path, inputs: list[Tensor], atol: float, rtol: float
) -> None:
    ort = require("onnxruntime", "onnx", "checking an ONNX export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a check, not a benchmark: leave the other cores alone
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxExportError(f"ONNX Runtime cannot load the exported model: {exc}") from exc
    feed = session.get_inputs()[0]
    for x in inputs:
        expected = _as_tensor(model(x)).float()
        try:
            array = x.numpy().astype(onnx_input_dtype(feed.type), copy=False)
            got = torch.from_numpy(session.run(None, {feed.name: array})[0]).float()
        except Exception as exc:
            raise OnnxExportError(
                f"ONNX Runtime failed on inputs of shape {tuple(x.shape)} (a dynamic axis that "
                f"was specialized during export?): {type(exc).__name__}: {exc}"
            ) from exc
        if got.shape != expected.shape:
            raise OnnxExportError(
                f"the ONNX model returns shape {tuple(got.shape)} for inputs of shape "
                f"{tuple(x.shape)}; PyTorch returns {tuple(expected.shape)}."
            )
        diff = (got - expected).abs()
        bound = atol + rtol * expected.abs()
        if not bool((diff <= bound).all()) or not bool(torch.isfinite(got).all()):
            raise OnnxExportError(
                f"the ONNX model's outputs differ from PyTorch's on inputs of shape "
                f"{tuple(x.shape)}: max abs difference {float(diff.max()):.3g} "
                f"(tolerance {atol:g} + {rtol:g} x |output|, largest |output| "
                f"{float(expected.abs().max()):.3g})."
            )
