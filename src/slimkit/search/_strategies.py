"""Search strategies behind one ask/tell interface: random, regularized evolution, Optuna.

``ask()`` returns a :class:`Candidate` (an architecture and the decisions behind it); after
evaluating it, ``tell(candidate, values, constraints)`` reports the objective values (one per
objective, in the objective's directions) and the constraint values (feasible when ``<= 0``).
Several candidates may be asked before any is told (parallel evaluation).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimkit._optional import require
from slimkit.errors import ConfigError
from slimkit.search._space import Decision, SearchSpace

__all__ = ["Candidate", "OptunaStrategy", "RandomSearch", "RegularizedEvolution", "Strategy"]


@dataclass
class Candidate:
    """An architecture proposed by a strategy.

    Attributes:
        number: Its position in the strategy's sequence of asks, from 0.
        params: Decision name -> value.
        arch: What the space returned (JSON-like data).
        decisions: The decisions in the order they were made.
        handle: The strategy's own reference (an Optuna trial).
    """

    number: int
    params: dict[str, Any]
    arch: Any
    decisions: tuple[Decision, ...] = ()
    handle: Any = field(default=None, repr=False)


class Strategy(abc.ABC):
    """Proposes architectures and learns from their measured values.

    Args:
        space: The search space.
        directions: ``"maximize"`` or ``"minimize"`` per objective.
        seed: Seed of every random choice the strategy makes.
    """

    name = "strategy"
    multi_objective = False

    def __init__(
        self, space: SearchSpace, *, directions: Sequence[str] = ("maximize",), seed: int = 0
    ) -> None:
        self.space = space
        self.directions = list(directions)
        if len(self.directions) > 1 and not self.multi_objective:
            raise ConfigError(
                f"strategy {self.name!r} optimizes one value; got {len(self.directions)} "
                "objectives. Use nsga2, tpe or random for a multi-objective search, or "
                "combine the objectives into MnasNet's reward."
            )
        self.seed = seed
        self.rng = random.Random(seed)
        self._asked = 0

    def ask(self) -> Candidate:
        """The next architecture to evaluate."""
        candidate = self._propose(self._asked)
        self._asked += 1
        return candidate

    @abc.abstractmethod
    def _propose(self, number: int) -> Candidate: ...

    def tell(
        self, candidate: Candidate, values: float | Sequence[float],
        constraints: Sequence[float] = (),
    ) -> None:  # fmt: skip
        """Report the objective ``values`` of ``candidate`` and its constraint values."""
        vals = [float(values)] if isinstance(values, int | float) else [float(v) for v in values]
        if len(vals) != len(self.directions):
            raise ConfigError(
                f"tell got {len(vals)} value(s) for {len(self.directions)} objective(s)."
            )
        self._learn(candidate, vals, [float(c) for c in constraints])

    def _learn(  # noqa: B027  (a hook: random search learns nothing)
        self, candidate: Candidate, values: list[float], constraints: list[float]
    ) -> None:
        """Update the strategy (nothing for random search)."""

    def _candidate(self, number: int, sample: Any) -> Candidate:
        return Candidate(number, sample.params, sample.arch, sample.decisions)


class RandomSearch(Strategy):
    """Uniform random sampling of the space: the baseline every strategy must beat."""

    name = "random"
    multi_objective = True

    def _propose(self, number: int) -> Candidate:
        return self._candidate(number, self.space.sample(rng=self.rng))


class RegularizedEvolution(Strategy):
    """Aging evolution (Real et al., 2019): tournament parent, one mutation, oldest dies.

    The first ``population`` candidates are random. Then each child mutates one decision of the
    best of ``sample_size`` members drawn from the population; every told child joins the
    population and the oldest member leaves it, so old lucky architectures do not dominate.
    Infeasible members (a violated constraint) lose every tournament against feasible ones.

    Example:
        >>> from slimkit.search import FmnistSpace
        >>> evo = RegularizedEvolution(FmnistSpace(), population=4, sample_size=2)
        >>> for _ in range(8):
        ...     c = evo.ask()
        ...     evo.tell(c, c.arch["stem"])
        >>> len(evo.population)
        4
    """

    name = "evolution"

    def __init__(
        self, space: SearchSpace, *, directions: Sequence[str] = ("maximize",), seed: int = 0,
        population: int = 20, sample_size: int = 5,
    ) -> None:  # fmt: skip
        super().__init__(space, directions=directions, seed=seed)
        if population < 2 or not 1 <= sample_size <= population:
            raise ConfigError(
                f"evolution needs population >= 2 and 1 <= sample_size <= population, got "
                f"{population} and {sample_size}."
            )
        self.population_size, self.sample_size = population, sample_size
        self.population: collections.deque[tuple[Candidate, tuple[bool, float]]] = (
            collections.deque()
        )
        self._told = 0

    def _propose(self, number: int) -> Candidate:
        if self._told < self.population_size:
            return self._candidate(number, self.space.sample(rng=self.rng))
        contenders = self.rng.sample(list(self.population), self.sample_size)
        parent = max(contenders, key=lambda member: member[1])[0]
        return self._candidate(number, self.mutate(parent))

    def mutate(self, parent: Candidate) -> Any:
        """Change one decision of ``parent`` (that has another option) and replay the space."""
        mutable = [d for d in parent.decisions if len(d.choices) > 1]
        if not mutable:
            return self.space.sample(rng=self.rng)
        decision = self.rng.choice(mutable)
        others = [i for i in range(len(decision.choices)) if i != decision.index]
        params = {**parent.params, decision.name: decision.choices[self.rng.choice(others)]}
        return self.space.replay(params, self.rng)

    def _learn(self, candidate: Candidate, values: list[float], constraints: list[float]) -> None:
        sign = 1.0 if self.directions[0] == "maximize" else -1.0
        key = (all(c <= 0 for c in constraints), sign * values[0])
        self.population.append((candidate, key))
        if len(self.population) > self.population_size:
            self.population.popleft()
        self._told += 1


class OptunaStrategy(Strategy):
    """Optuna's samplers (TPE, NSGA-II, random) driving the space through ``optuna.Trial``.

    Args:
        sampler: ``"tpe"``, ``"nsga2"`` or ``"random"``, or an ``optuna.samplers`` instance.
        study: An existing study to ask from (its storage is shared by every worker); by
            default an in-memory study.
        population: NSGA-II's population size.
    """

    name = "optuna"
    multi_objective = True

    def __init__(
        self, space: SearchSpace, *, directions: Sequence[str] = ("maximize",), seed: int = 0,
        sampler: Any = "tpe", study: Any = None, population: int = 20,
    ) -> None:  # fmt: skip
        super().__init__(space, directions=directions, seed=seed)
        optuna = require("optuna", "search", "Optuna search strategies")
        if study is None:
            with quiet_optuna():
                study = optuna.create_study(
                    directions=self.directions, sampler=make_sampler(sampler, seed, population)
                )
        self.study = study

    def _propose(self, number: int) -> Candidate:
        trial = self.study.ask()
        arch = self.space(trial)
        return Candidate(number, dict(trial.params), arch, handle=trial)

    def _learn(self, candidate: Candidate, values: list[float], constraints: list[float]) -> None:
        trial = candidate.handle
        set_constraints(trial, constraints)
        self.study.tell(trial, values)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created ...") off for the block."""
    optuna = require("optuna", "search", "Optuna search strategies")
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def make_sampler(sampler: Any, seed: int, population: int = 20) -> Any:
    """An Optuna sampler by name (``tpe``, ``nsga2``, ``random``) with slimkit's constraints.

    The constraints are read from each trial's ``constraints`` user attribute (feasible when
    every value is ``<= 0``).
    """
    optuna = require("optuna", "search", "Optuna search strategies")
    if not isinstance(sampler, str):
        return sampler
    with warnings.catch_warnings():
        # multivariate TPE and constraints_func are marked experimental; both are long stable.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _named_sampler(optuna, sampler, seed, population)


def _named_sampler(optuna: Any, sampler: str, seed: int, population: int) -> Any:
    # Optuna >= 5 reads the constraints set on each trial; Optuna 4 needs a constraints_func.
    func = None if _native_constraints() else trial_constraints
    if sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, constraints_func=func, multivariate=True, group=True,
            n_startup_trials=10,
        )  # fmt: skip
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, constraints_func=func, population_size=population
        )
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown Optuna sampler {sampler!r}; use tpe, nsga2 or random.")


def trial_constraints(trial: Any) -> Sequence[float]:
    """Optuna ``constraints_func`` (Optuna 4): the values stored on the trial."""
    return trial.user_attrs.get("constraints", [])


def _native_constraints() -> bool:
    optuna = require("optuna", "search", "Optuna search strategies")
    return hasattr(optuna.trial.Trial, "set_constraint")  # Optuna >= 5


def set_constraints(trial: Any, constraints: Sequence[float]) -> None:
    """Record the constraint values on an Optuna trial for its sampler (feasible when <= 0)."""
    trial.set_user_attr("constraints", list(constraints))
    if _native_constraints():
        for i, value in enumerate(constraints):
            trial.set_constraint(f"c{i}", value)
