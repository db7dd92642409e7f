"""Structured pruning: rank removable units, choose how many to remove, slice them out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from slimkit._runtime import log
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.graph import DependencyGraph, build_dependency_graph
from slimkit.measure import ProfileConfig, count_macs, count_params, profile
from slimkit.prune._config import StructuredConfig
from slimkit.prune._importance import unit_scores

Removals = dict[int, list[int]]


@dataclass(frozen=True)
class PruneStep:
    """What one pruning step did."""

    step: int
    removed_units: int
    total_units: int
    measure_before: float
    measure_after: float


def prune(
    model: nn.Module,
    config: StructuredConfig,
    example_inputs: Tensor | None = None,
    *,
    data: DataSplits | None = None,
    history: list[PruneStep] | None = None,
) -> nn.Module:
    """Return a physically smaller copy of ``model`` (structured pruning).

    Args:
        model: The model to prune; it is not modified.
        config: What to remove and how much.
        example_inputs: An input batch (one sample is enough); by default the first test sample
            of ``data``.
        data: Training data for ``taylor`` importance and ``finetune``.
        history: If given, one :class:`PruneStep` per step is appended to it.

    Example:
        >>> import torch
        >>> from slimkit.models import create_model
        >>> small = prune(create_model("fmnist_cnn"), StructuredConfig(keep=0.5, scope="local"),
        ...               torch.zeros(1, 1, 28, 28))
        >>> small[0].out_channels
        16
    """
    example = _example(example_inputs, data)
    needs_data = config.importance == "taylor" or config.finetune is not None
    if needs_data and data is None:
        raise ConfigError(
            f"importance={config.importance!r} and finetune need data=; none was given."
        )
    measure = _measure_fn(config.target, example)
    original = measure(model)
    current = model
    for step in range(1, config.steps + 1):
        # Geometric schedule: every step keeps the same fraction of what the previous one left.
        goal = original * config.keep ** (step / config.steps)
        graph = build_dependency_graph(current, example, ignore=config.ignore)
        if not any(g.size > config.min_channels for g in graph.groups):
            raise ConfigError(
                "nothing can be pruned: every channel group is fixed or at its minimum size."
            )
        scores = unit_scores(current, graph, config, data)
        removals = _choose(current, graph, scores, config, measure, goal, original)
        before = measure(current)
        current = graph.prune(current, removals)
        after = measure(current)
        removed = sum(len(v) for v in removals.values())
        measured = (
            ""
            if config.target == "channels"
            else (f", {config.target} {before:,.4g} -> {after:,.4g} (goal {goal:,.4g})")
        )
        log(
            f"prune step {step}/{config.steps}: removed {removed}/{graph.num_units} units{measured}"
        )
        if history is not None:
            history.append(PruneStep(step, removed, graph.num_units, before, after))
        if config.finetune is not None:
            from slimkit.train import train

            current = train(current, config.finetune, data).model
    return current


def _example(example_inputs: Tensor | None, data: DataSplits | None) -> Tensor:
    if example_inputs is not None:
        return example_inputs[:1]
    if data is not None:
        return data.example_input(1)
    raise ConfigError("prune needs example_inputs= or data= to capture the model's graph.")


def _measure_fn(target: str, example: Tensor) -> Callable[[nn.Module], float]:
    if target == "params":
        return lambda m: float(count_params(m)[0])
    if target == "macs":

        def macs(m: nn.Module) -> float:
            count = count_macs(m, example)
            if count.macs is None:
                raise ConfigError(f"target 'macs' needs countable MACs: {count.note}")
            return float(count.macs)

        return macs
    if target == "latency":
        cfg = ProfileConfig(threads=1, memory=False, energy=False, max_seconds=0.3, min_runs=10)
        return lambda m: profile(m, example, config=cfg).latency.p50_ms
    return lambda m: float("nan")  # channels: counted on the graph, not measured


def _choose(
    model: nn.Module,
    graph: DependencyGraph,
    scores: list[np.ndarray],
    config: StructuredConfig,
    measure: Callable[[nn.Module], float],
    goal: float,
    original: float,
) -> Removals:
    caps = [max(0, g.size - config.min_channels) for g in graph.groups]
    order = _global_order(graph, scores)

    def plan(amount: float) -> Removals:
        if config.scope == "local":
            counts = [
                min(cap, int(g.size * amount)) for g, cap in zip(graph.groups, caps, strict=True)
            ]
        else:
            counts = _take(order, round(amount), caps)
        return _lowest(
            graph,
            scores,
            [_round(g.size, n, config) for g, n in zip(graph.groups, counts, strict=True)],
        )

    upper = 1.0 if config.scope == "local" else float(sum(caps))
    if config.target == "channels":
        total = graph.num_units
        fraction = 1 - (goal / original if not math.isnan(original) else config.keep)
        if math.isnan(original):
            fraction = 1 - config.keep ** (1 / config.steps)
        return plan(fraction if config.scope == "local" else fraction * total)
    # Smallest removal that reaches the goal, by bisection on the measured model.
    low, high = 0.0, upper
    best = plan(high)
    for _ in range(12 if config.scope == "local" else max(1, math.ceil(math.log2(upper + 1)))):
        mid = (low + high) / 2 if config.scope == "local" else float(int((low + high) / 2))
        candidate = plan(mid)
        if measure(graph.prune(model, candidate)) <= goal:
            high, best = mid, candidate
        else:
            low = mid if config.scope == "local" else mid + 1
        if config.scope != "local" and low >= high:
            break
    return best


def _global_order(graph: DependencyGraph, scores: list[np.ndarray]) -> list[tuple[int, int]]:
    """(group, unit) pairs from least to most important, scores normalized per group."""
    entries = []
    for gi, s in enumerate(scores):
        norm = s / (s.mean() + 1e-12)
        entries += [(float(v), gi, ui) for ui, v in enumerate(norm)]
    entries.sort()
    return [(gi, ui) for _, gi, ui in entries]


def _take(order: list[tuple[int, int]], k: int, caps: list[int]) -> list[int]:
    counts = [0] * len(caps)
    taken = 0
    for gi, _ in order:
        if taken >= k:
            break
        if counts[gi] < caps[gi]:
            counts[gi] += 1
            taken += 1
    return counts


def _round(size: int, removed: int, config: StructuredConfig) -> int:
    """Remove fewer so that what stays is a multiple of ``round_to`` (and at least the minimum)."""
    kept = size - removed
    if config.round_to > 1 and size >= config.round_to:
        kept = min(size, math.ceil(kept / config.round_to) * config.round_to)
    return size - max(kept, min(size, config.min_channels))


def _lowest(graph: DependencyGraph, scores: list[np.ndarray], counts: list[int]) -> Removals:
    return {
        gi: sorted(np.argsort(scores[gi], kind="stable")[:n].tolist())
        for gi, n in enumerate(counts)
        if n > 0
    }
