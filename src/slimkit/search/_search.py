"""``search``: run a strategy over a space, measure every candidate, return the result."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from slimkit._io import write_json
from slimkit._runtime import log
from slimkit.data import DataConfig, DataSplits, load_dataset
from slimkit.errors import ConfigError
from slimkit.models import create_model
from slimkit.search._config import SearchConfig
from slimkit.search._controller import ReinforceController
from slimkit.search._evaluate import CandidateEvaluator, Evaluation, as_evaluation, search_splits
from slimkit.search._fmnist_space import get_space
from slimkit.search._objectives import DIRECTIONS, Objective, pareto_front
from slimkit.search._space import SearchSpace, as_space, enumerate_size
from slimkit.search._strategies import (
    OptunaStrategy,
    RandomSearch,
    RegularizedEvolution,
    Strategy,
)
from slimkit.search._supernet import Supernet

__all__ = ["SearchResult", "TrialRecord", "make_strategy", "search"]


@dataclass
class TrialRecord:
    """One evaluated candidate."""

    number: int
    params: dict[str, Any]
    arch: Any
    metrics: dict[str, float]
    values: list[float]
    feasible: bool
    seconds: float = 0.0
    state: str = "COMPLETE"

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "state": self.state, "values": self.values,
            "feasible": self.feasible, "metrics": self.metrics, "seconds": self.seconds,
            "params": self.params, "arch": self.arch,
        }  # fmt: skip


@dataclass
class SearchResult:
    """The trials of a search, its best candidate and Pareto front.

    ``best`` is the feasible trial with the best first objective; the Pareto front is taken
    over the objectives (a single-objective search: over that objective and latency, or MACs
    when latency was not measured).
    """

    config: SearchConfig
    trials: list[TrialRecord]
    seconds: float = 0.0
    space_size: int | None = None
    supernet: Supernet | None = field(default=None, repr=False)
    calibration: list[Tensor] | None = field(default=None, repr=False)
    best_model: nn.Module | None = field(default=None, repr=False)

    @property
    def objective(self) -> Objective:
        return self.config.objective()

    @property
    def best(self) -> TrialRecord:
        done = [t for t in self.trials if t.state == "COMPLETE"]
        index = self.objective.best_index([t.metrics for t in done])
        if index is None:
            raise ConfigError(
                "no feasible candidate: every one violated a constraint; relax max_latency_ms, "
                "max_params or max_macs, or search longer."
            )
        return done[index]

    def front_metrics(self) -> list[str]:
        metrics = list(self.objective.metrics)
        if len(metrics) > 1:
            return metrics
        done = [t for t in self.trials if t.state == "COMPLETE"]
        second = "latency_ms" if done and "latency_ms" in done[0].metrics else "macs"
        return metrics if second == metrics[0] else [*metrics, second]

    def pareto_front(self) -> list[TrialRecord]:
        """The feasible non-dominated trials, sorted by the second front metric."""
        metrics = self.front_metrics()
        feasible = [t for t in self.trials if t.state == "COMPLETE" and t.feasible]
        points = [[t.metrics[m] for m in metrics] for t in feasible]
        front = [feasible[i] for i in pareto_front(points, [DIRECTIONS[m] for m in metrics])]
        return sorted(front, key=lambda t: [t.metrics[m] for m in metrics[1:]])

    def model(self, trial: TrialRecord | None = None) -> nn.Module:
        """The trial's (default: the best) architecture as a registered ``fmnist_searched``.

        With a supernet it holds the inherited weights (BatchNorm recalibrated); after a
        search that trained its candidates, the best one's trained weights; otherwise it is
        untrained.
        """
        trial = trial or self.best
        if self.supernet is not None:
            return self.supernet.export(trial.arch, self.calibration)
        if self.best_model is not None and trial is self.best:
            return self.best_model
        return create_model("fmnist_searched", arch=trial.arch).eval()

    def to_dict(self) -> dict[str, Any]:
        best = None
        with contextlib.suppress(ConfigError):
            best = self.best.to_dict()
        return {
            "config": self.config.model_dump(mode="json"),
            "seconds": self.seconds,
            "space_size": self.space_size,
            "best": best,
            "pareto_front": [t.number for t in self.pareto_front()],
            "trials": [t.to_dict() for t in self.trials],
        }

    def plot(self, path: str | Path, baseline: Mapping[str, Any] | None = None) -> Path:
        """Draw the trials and the Pareto front (PNG); ``baseline`` adds a reference point."""
        from slimkit.search._plot import plot_front

        return plot_front(self, Path(path), baseline)

    def save(self, folder: str | Path, *, model: bool = True) -> Path:
        """Write ``trials.json``, ``pareto.png`` and (with ``model``) the best model."""
        from slimkit.serialize import save_model

        folder = Path(folder)
        write_json(folder / "trials.json", self.to_dict())
        if self.trials:
            self.plot(folder / "pareto.png")
        if model:
            save_model(self.model(), folder / "model")
        return folder


def make_strategy(config: SearchConfig, space: SearchSpace, *, study: Any = None) -> Strategy:
    """The strategy ``config.strategy`` over ``space``, seeded by ``config.seed``."""
    directions = config.objective().directions
    seed = config.seed
    if config.strategy == "random":
        return RandomSearch(space, directions=directions, seed=seed)
    if config.strategy == "evolution":
        return RegularizedEvolution(
            space, directions=directions, seed=seed,
            population=config.population, sample_size=config.tournament,
        )  # fmt: skip
    if config.strategy == "reinforce":
        c = config.controller
        return ReinforceController(
            space, directions=["maximize"], seed=seed, hidden=c.hidden, cell=c.cell, lr=c.lr,
            baseline_decay=c.baseline_decay, entropy_weight=c.entropy_weight,
            normalize=c.normalize, batch=c.batch, tanh_constant=c.tanh_constant,
        )  # fmt: skip
    return OptunaStrategy(
        space, directions=directions, seed=seed, sampler=config.strategy, study=study,
        population=config.population,
    )  # fmt: skip


def search(
    config: SearchConfig | None = None,
    data: DataSplits | None = None,
    *,
    space: SearchSpace | Callable[[Any], Any] | None = None,
    evaluate: Callable[[Any], Evaluation | Mapping[str, float]] | None = None,
    strategy: Strategy | None = None,
) -> SearchResult:
    """Search ``config.trials`` candidates and return every measurement.

    Args:
        config: What to search and how (default :class:`SearchConfig()`).
        data: The data set (its training split is divided into the search's own training and
            validation samples); default the one named by ``config.data``.
        space: A space instead of ``config.space`` (a :class:`SearchSpace` or a function of a
            trial).
        evaluate: ``evaluate(arch)`` returning metrics, instead of the built-in evaluator (for
            a space whose architectures are not ``fmnist_searched`` ones, or a cheap proxy).
        strategy: A strategy instance instead of ``config.strategy``.

    Example:
        >>> cfg = SearchConfig(strategy="random", trials=5, objectives=("macs",),
        ...                    evaluator="none")
        >>> result = search(cfg, evaluate=lambda arch: {"macs": float(arch["stem"])})
        >>> result.best.metrics["macs"] == min(t.metrics["macs"] for t in result.trials)
        True
    """
    config = config or SearchConfig()
    the_space = (
        as_space(space) if space is not None else get_space(config.space, **config.space_options)
    )
    objective = config.objective()
    evaluator: Callable[[Any], Evaluation | Mapping[str, float]]
    if evaluate is not None:
        evaluator = evaluate
    else:
        if data is None and config.evaluator != "none":
            data = load_dataset(DataConfig(name=config.data))
        split = search_splits(data, config) if data is not None else None
        evaluator = CandidateEvaluator(config, split)
    strat = strategy or make_strategy(config, the_space)
    scalar = isinstance(strat, ReinforceController)
    start = time.perf_counter()
    records: list[TrialRecord] = []
    best_model, best_key = None, None
    for i in range(config.trials):
        t0 = time.perf_counter()
        candidate = strat.ask()
        ev = as_evaluation(evaluator(candidate.arch))
        metrics = objective.complete(ev.metrics)
        values = objective.values(metrics)
        constraints = objective.constraints(metrics)
        strat.tell(candidate, [objective.scalar(metrics)] if scalar else values, constraints)
        feasible = objective.feasible(metrics)
        records.append(TrialRecord(candidate.number, candidate.params, candidate.arch, metrics,
                                   values, feasible, time.perf_counter() - t0))  # fmt: skip
        key = _rank_key(objective, values, feasible)
        if ev.model is not None and (best_key is None or key > best_key):
            best_model, best_key = ev.model, key
        log(_trial_line(i, config.trials, metrics, feasible))
    # A supernet evaluator: the best model is exported with the batches it was evaluated with.
    supernet = getattr(evaluator, "supernet", None)
    calibrate = getattr(evaluator, "calibration", None)
    calibration = calibrate() if supernet is not None and callable(calibrate) else None
    return SearchResult(
        config, records, time.perf_counter() - start, _size(the_space),
        supernet=supernet, calibration=calibration, best_model=best_model,
    )  # fmt: skip


def _rank_key(objective: Objective, values: Sequence[float], feasible: bool) -> tuple[bool, float]:
    sign = 1.0 if objective.directions[0] == "maximize" else -1.0
    return feasible, sign * values[0]


def _size(space: SearchSpace) -> int | None:
    """The space's size: its closed form, or counted when small; ``None`` when too many."""
    try:
        if type(space).size is SearchSpace.size:  # no closed form: count, within reason
            return enumerate_size(space, limit=100_000)
        return space.size()
    except ConfigError:
        return None


def _trial_line(i: int, n: int, metrics: Mapping[str, float], feasible: bool) -> str:
    shown = []
    for key, fmt in (("accuracy", "{:.4f}"), ("reward", "{:.4f}"), ("latency_ms", "{:.3f} ms"),
                     ("params", "{:.0f} params"), ("macs", "{:.3g} MACs")):  # fmt: skip
        if key in metrics:
            shown.append(f"{key} " + fmt.format(metrics[key]))
    flag = "" if feasible else "  (infeasible)"
    return f"trial {i + 1}/{n}: " + ", ".join(shown) + flag
