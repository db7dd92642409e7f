"""Compiling: inference passes, export, runtimes, and the fastest backend chosen by measurement.

:func:`compile_model` runs the inference passes (:func:`apply_passes`: dropout removal, batch
norm folding, activation fusion, each checked numerically), builds the model on every available
backend (PyTorch eager and ``torch.compile``, ONNX Runtime, OpenVINO, ExecuTorch, TVM),
compares each one's outputs with PyTorch, times them all in one interleaved run at the batch
sizes asked for, and keeps the fastest faithful one. :func:`export_onnx` and
:func:`export_program` (a ``torch.export`` ``.pt2`` file) write checked exports with dynamic
batch (and sequence) axes.

Example:
    >>> import torch
    >>> from slimkit.compile import fold_batchnorm
    >>> from slimkit.models import create_model
    >>> folded = fold_batchnorm(create_model("fmnist_tiny").eval(), torch.zeros(1, 1, 28, 28))
    >>> sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    0
"""

from __future__ import annotations

from slimkit.compile._backends import (
    Backend,
    BuildContext,
    backend_unavailable,
    get_backend,
    list_backends,
    register_backend,
)
from slimkit.compile._fuse import FoldedPair, batchnorm_pairs, fold_batchnorm
from slimkit.compile._onnx import OnnxExportError, export_onnx
from slimkit.compile._ort import OnnxRuntimeRunner
from slimkit.compile._passes import (
    DEFAULT_PASSES,
    FusedConv1d,
    FusedConv2d,
    FusedLinear,
    PassCheckError,
    PassRecord,
    apply_passes,
    fuse_activations,
    list_passes,
    remove_dropout,
)
from slimkit.compile._program import ProgramExportError, export_program
from slimkit.compile._select import BackendRow, CompileConfig, CompileResult, compile_model
from slimkit.compile._torch import TorchCompileRunner

__all__ = [
    "DEFAULT_PASSES",
    "Backend",
    "BackendRow",
    "BuildContext",
    "CompileConfig",
    "CompileResult",
    "FoldedPair",
    "FusedConv1d",
    "FusedConv2d",
    "FusedLinear",
    "OnnxExportError",
    "OnnxRuntimeRunner",
    "PassCheckError",
    "PassRecord",
    "ProgramExportError",
    "TorchCompileRunner",
    "apply_passes",
    "backend_unavailable",
    "batchnorm_pairs",
    "compile_model",
    "export_onnx",
    "export_program",
    "fold_batchnorm",
    "fuse_activations",
    "get_backend",
    "list_backends",
    "list_passes",
    "register_backend",
    "remove_dropout",
]
