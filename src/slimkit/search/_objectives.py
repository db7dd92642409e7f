"""What a search optimizes: metrics, MnasNet's reward, constraints and the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from slimkit.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "Metric",
    "Objective",
    "dominates",
    "mnasnet_reward",
    "pareto_front",
]

Metric = Literal["accuracy", "latency_ms", "params", "macs", "reward"]

DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "reward": "maximize",
    "latency_ms": "minimize",
    "params": "minimize",
    "macs": "minimize",
}
"""The direction of every metric a search can optimize."""


def mnasnet_reward(
    accuracy: float, latency_ms: float, target_ms: float, alpha: float = -0.07, beta: float = -0.07
) -> float:
    """MnasNet's reward ``ACC x (LAT / T)^w``, with ``w = alpha`` if ``LAT <= T`` else ``beta``.

    ``alpha = beta = -0.07`` is MnasNet's soft trade-off (twice as slow costs about 5 % of
    reward); ``alpha = 0, beta = -1`` is its hard constraint.

    Example:
        >>> round(mnasnet_reward(0.9, 2.0, 1.0), 4)
        0.8574
        >>> mnasnet_reward(0.9, 0.5, 1.0, alpha=0.0, beta=-1.0)
        0.9
    """
    if target_ms <= 0 or latency_ms <= 0:
        raise ConfigError(
            f"MnasNet reward needs positive latencies, got {latency_ms}, {target_ms}."
        )
    w = alpha if latency_ms <= target_ms else beta
    return accuracy * (latency_ms / target_ms) ** w


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether point ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "minimize":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated ``points`` (equal points are all kept), in input order.

    Example:
        >>> pareto_front([(0.9, 3.0), (0.8, 1.0), (0.85, 3.5), (0.9, 2.0)],
        ...              ["maximize", "minimize"])
        [1, 3]
    """
    return [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)
    ]


@dataclass(frozen=True)
class Objective:
    """The metrics a search optimizes, their constraints, and MnasNet's reward settings.

    Attributes:
        metrics: What to optimize; one metric is a scalar search, more a multi-objective one.
        max_latency_ms: Constraint: latency at most this.
        max_params: Constraint: parameters at most this.
        max_macs: Constraint: MACs at most this.
        target_ms: MnasNet's target latency ``T`` (needed by the ``reward`` metric).
        alpha: MnasNet's exponent when the latency meets the target.
        beta: MnasNet's exponent when it does not.

    Example:
        >>> obj = Objective(("accuracy", "latency_ms"), max_latency_ms=1.0)
        >>> obj.directions
        ['maximize', 'minimize']
        >>> obj.values({"accuracy": 0.9, "latency_ms": 2.0}), obj.feasible({"latency_ms": 2.0})
        ([0.9, 2.0], False)
    """

    metrics: tuple[str, ...] = ("accuracy",)
    max_latency_ms: float | None = None
    max_params: int | None = None
    max_macs: int | None = None
    target_ms: float | None = None
    alpha: float = -0.07
    beta: float = -0.07

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in DIRECTIONS]
        if not self.metrics or unknown:
            raise ConfigError(
                f"unknown objective metric(s) {unknown or '(none)'}; "
                f"choose from {list(DIRECTIONS)}."
            )
        if "reward" in self.metrics and self.target_ms is None:
            raise ConfigError("the 'reward' objective (MnasNet) needs target_ms, its latency T.")

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[m] for m in self.metrics]

    @property
    def needs(self) -> set[str]:
        """The measurements the metrics and constraints need."""
        needed = {m for m in self.metrics if m != "reward"}
        if "reward" in self.metrics:
            needed |= {"accuracy", "latency_ms"}
        if self.max_latency_ms is not None:
            needed.add("latency_ms")
        return needed

    def complete(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """``metrics`` plus the reward, when it is an objective."""
        out = dict(metrics)
        if "reward" in self.metrics:
            assert self.target_ms is not None
            out["reward"] = mnasnet_reward(
                out["accuracy"], out["latency_ms"], self.target_ms, self.alpha, self.beta
            )
        return out

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        """The objective values, in the order of :attr:`metrics`."""
        full = self.complete(metrics)
        return [float(full[m]) for m in self.metrics]

    @property
    def limits(self) -> dict[str, float]:
        """The constrained metrics and their limits."""
        limits = {
            "latency_ms": self.max_latency_ms,
            "params": self.max_params,
            "macs": self.max_macs,
        }
        return {k: float(v) for k, v in limits.items() if v is not None}

    def constraints(self, metrics: Mapping[str, float]) -> list[float]:
        """One value per limit (:attr:`limits` order), feasible when ``<= 0`` (as in Optuna)."""
        return [float(metrics[k]) - v for k, v in self.limits.items()]

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(c <= 0 for c in self.constraints(metrics))

    def scalar(self, metrics: Mapping[str, float]) -> float:
        """The single objective as a reward to maximize, with violated constraints penalized.

        A violated limit multiplies the reward by ``limit / measured`` (MnasNet's hard
        constraint, ``beta = -1``); a minimized metric is negated. Used by the strategies that
        take one number (the RL controller, evolution, random search).
        """
        if len(self.metrics) != 1:
            raise ConfigError(
                f"a scalar reward needs one objective metric, got {list(self.metrics)}; use "
                "strategy nsga2, tpe or random for a multi-objective search."
            )
        [value] = self.values(metrics)
        penalty = 1.0
        for key, limit in self.limits.items():
            if metrics[key] > limit:
                penalty *= limit / float(metrics[key])
        if DIRECTIONS[self.metrics[0]] == "minimize":
            return -value / penalty
        return value * penalty if value >= 0 else value / penalty

    def best_index(self, rows: Sequence[Mapping[str, float]]) -> int | None:
        """Index of the best feasible row by the first metric (``None`` if none is feasible)."""
        sign = 1.0 if self.directions[0] == "maximize" else -1.0
        best, best_value = None, -math.inf
        for i, row in enumerate(rows):
            if not self.feasible(row):
                continue
            value = sign * self.values(row)[0]
            if value > best_value:
                best, best_value = i, value
        return best
