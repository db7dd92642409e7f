"""Pruning: remove channels, filters, heads and neurons so the model really gets smaller.

Structured pruning reads the model through the shared dependency graph
(:mod:`slimkit.graph`), so coupled channels (across residual adds, concatenations, grouped and
depthwise convolutions, norms and flatten-to-linear) are removed together and the result is a
plain, smaller ``nn.Module``. Whole residual blocks go with :func:`drop_layers`; per-weight
sparsity (unstructured) with :func:`sparsify`.

Example:
    >>> import torch
    >>> import slimkit.prune as sp
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_resnet")
    >>> small = sp.prune(model, sp.StructuredConfig(keep=0.5), torch.zeros(1, 1, 28, 28))
    >>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    True
"""

from __future__ import annotations

from slimkit._storage import load_sparse, load_sparse_state, save_sparse
from slimkit.prune._config import StructuredConfig
from slimkit.prune._importance import register_importance, unit_scores
from slimkit.prune._layers import LayerConfig, drop_layers, residual_blocks
from slimkit.prune._structured import PruneStep, prune
from slimkit.prune._unstructured import (
    LayerSparsity,
    SparsityStats,
    UnstructuredConfig,
    cubic_sparsity,
    prunable_layers,
    sparsify,
    sparsity_stats,
)

__all__ = [
    "LayerConfig",
    "LayerSparsity",
    "PruneStep",
    "SparsityStats",
    "StructuredConfig",
    "UnstructuredConfig",
    "cubic_sparsity",
    "drop_layers",
    "load_sparse",
    "load_sparse_state",
    "prunable_layers",
    "prune",
    "register_importance",
    "residual_blocks",
    "save_sparse",
    "sparsify",
    "sparsity_stats",
    "unit_scores",
]
