"""The ``sparsify`` recipe step: unstructured pruning, its sparsity table and its size on disk.

Example recipe::

    steps:
      - train: {epochs: 3}
      - sparsify: {sparsity: 0.8, schedule: cubic, finetune: {epochs: 3, lr: 0.02}}

The step's ``model.safetensors`` stores the zeros as a bitmask (see :mod:`slimkit._storage`); its
info holds the per-layer sparsity, the total sparsity of the pruned layers and of the whole model,
and the file size sparse and dense.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.prune._unstructured import (
    UnstructuredConfig,
    prunable_layers,
    sparsify,
    sparsity_stats,
)
from slimkit.recipe import StepContext, StepOutput, register_step
from slimkit.serialize import save_weights

__all__ = ["sparsify_info", "sparsify_step"]


@register_step("sparsify", UnstructuredConfig)
def sparsify_step(model: nn.Module, config: UnstructuredConfig, ctx: StepContext) -> StepOutput:
    """Zero the smallest weights (unstructured magnitude pruning) and store them sparse on disk.

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("sparsify").handler is sparsify_step
        True
    """
    history: list[dict[str, Any]] = []
    sparse = sparsify(model, config, ctx.data, history=history)
    info = sparsify_info(sparse, prunable_layers(model, config))
    if history:
        info["history"] = history
    return StepOutput(sparse, info)


def sparsify_info(model: nn.Module, pruned: list[str]) -> dict[str, Any]:
    """Describe ``model``'s sparsity and its file size, sparse and dense, as JSON.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> layer = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> with torch.no_grad():
        ...     _ = layer[0].weight[:48].zero_()
        >>> info = sparsify_info(layer, ["0"])
        >>> info["sparsity"], info["size_ratio"] < 0.5
        (0.75, True)
    """
    with tempfile.TemporaryDirectory(prefix="slimkit-size-") as tmp:
        sparse_bytes = save_weights(model, Path(tmp) / "sparse.safetensors").stat().st_size
        dense_bytes = save_weights(model, Path(tmp) / "dense.safetensors", sparse=False)
        dense_bytes = dense_bytes.stat().st_size
    stats = sparsity_stats(model)
    chosen = set(pruned)
    return {
        "sparsity": round(sparsity_stats(model, pruned).sparsity, 6),
        "model_sparsity": round(stats.model_sparsity, 6),
        "dense_bytes": dense_bytes,
        "sparse_bytes": sparse_bytes,
        "size_ratio": round(sparse_bytes / dense_bytes, 4),
        "layers": [{**row, "pruned": row["layer"] in chosen} for row in stats.rows()],
    }
