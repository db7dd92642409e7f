"""Importance of every removable unit: which channels matter least."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from slimkit.data import DataSplits
from slimkit.graph import DependencyGraph
from slimkit.prune._config import StructuredConfig

Scorer = Callable[
    [nn.Module, DependencyGraph, StructuredConfig, DataSplits | None], list[np.ndarray]
]
_SCORERS: dict[str, Scorer] = {}


def register_importance(name: str) -> Callable[[Scorer], Scorer]:
    """Register a scorer: ``(model, graph, config, data) -> one score array per group``."""

    def deco(fn: Scorer) -> Scorer:
        _SCORERS[name] = fn
        return fn

    return deco


def unit_scores(
    model: nn.Module, graph: DependencyGraph, config: StructuredConfig, data: DataSplits | None
) -> list[np.ndarray]:
    """Scores of the units of every group of ``graph`` (higher: more important)."""
    return _SCORERS[config.importance](model, graph, config, data)


def _slice_sums(
    graph: DependencyGraph, tensors: dict[str, Tensor], power: int, weights_only: bool
) -> list[np.ndarray]:
    """Sum of |t|^power over each unit's slices of the given tensors."""
    return _weight_and_all_sums(graph, tensors, power)[0 if weights_only else 1]


def _weight_and_all_sums(
    graph: DependencyGraph, tensors: dict[str, Tensor], power: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-unit sums over weight matrices only, and over every tensor, in one pass."""
    powered: dict[str, Tensor] = {}
    reduced: dict[tuple[str, int], np.ndarray] = {}

    def per_index(fqn: str, dim: int) -> np.ndarray:
        # One |t|^p per tensor and one reduction per (tensor, dim), however many slices use it.
        if (fqn, dim) not in reduced:
            if fqn not in powered:
                powered[fqn] = tensors[fqn].detach().abs().float() ** power
            t = powered[fqn]
            other = [d for d in range(t.ndim) if d != dim]
            reduced[(fqn, dim)] = (t.sum(dim=other) if other else t).numpy()
        return reduced[(fqn, dim)]

    weights, everything = [], []
    for group in graph.groups:
        w_scores, a_scores = np.zeros(group.size), np.zeros(group.size)
        for i, unit in enumerate(group.units):
            for s in unit.slices:
                if s.fqn not in tensors:
                    continue
                value = per_index(s.fqn, s.dim)[list(s.indices)].sum()
                a_scores[i] += value
                if tensors[s.fqn].ndim > 1:
                    w_scores[i] += value
        weights.append(w_scores)
        everything.append(a_scores)
    return weights, everything


def _magnitude(model: nn.Module, graph: DependencyGraph, power: int) -> list[np.ndarray]:
    scores, fallback = _weight_and_all_sums(graph, dict(model.named_parameters()), power)
    # Groups touching no weight matrix (only norms or biases) use those instead.
    return [s if s.any() else f for s, f in zip(scores, fallback, strict=True)]


@register_importance("l1")
def _l1(model, graph, config, data):
    return _magnitude(model, graph, 1)


@register_importance("l2")
def _l2(model, graph, config, data):
    return [np.sqrt(s) for s in _magnitude(model, graph, 2)]


@register_importance("random")
def _random(model, graph, config, data):
    rng = np.random.default_rng(config.seed)
    return [rng.random(g.size) for g in graph.groups]


@register_importance("bn_scale")
def _bn_scale(model, graph, config, data):
    gammas = {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    }
    scores = _slice_sums(graph, gammas, 1, weights_only=False)
    magnitude = _l2(model, graph, config, data)
    return [s if s.any() else m for s, m in zip(scores, magnitude, strict=True)]


@register_importance("taylor")
def _taylor(model, graph, config, data):
    if data is None:
        raise ValueError(
            "taylor importance needs data: pass data= (calibration batches with labels)"
        )
    params = dict(model.named_parameters())
    saliency = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()  # batch statistics of a few batches would distort BN; gradients are what we need
    loader = data.train_loader(64, seed=config.seed)
    for i, (inputs, labels) in enumerate(loader):
        if i >= config.calibration_batches:
            break
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), labels).backward()
        for name, p in params.items():
            if p.grad is not None:
                saliency[name] += (p.detach() * p.grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return _slice_sums(graph, saliency, 1, weights_only=False)
