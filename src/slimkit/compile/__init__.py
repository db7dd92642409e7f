"""Compiling: graph passes that rewrite a model for its runtime (fusions), and lowering to them.

Example:
    >>> import torch
    >>> from slimkit.compile import fold_batchnorm
    >>> from slimkit.models import create_model
    >>> folded = fold_batchnorm(create_model("fmnist_tiny").eval(), torch.zeros(1, 1, 28, 28))
    >>> sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    0
"""

from __future__ import annotations

from slimkit.compile._fuse import FoldedPair, batchnorm_pairs, fold_batchnorm
from slimkit.compile._onnx import OnnxExportError, export_onnx
from slimkit.compile._ort import OnnxRuntimeRunner

__all__ = [
    "FoldedPair",
    "OnnxExportError",
    "OnnxRuntimeRunner",
    "batchnorm_pairs",
    "export_onnx",
    "fold_batchnorm",
]
