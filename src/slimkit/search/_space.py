"""Search spaces written as code, define-by-run: a function asks a trial for each choice.

A space is any callable ``space(trial) -> architecture`` that calls ``trial.suggest_categorical``
and ``trial.suggest_int`` (the names Optuna uses, so an ``optuna.Trial`` drives a space as well
as slimkit's own strategies do). Later choices may depend on earlier ones (the blocks of a stage
exist only up to the depth chosen for it), so the space is explored by running it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from slimkit.errors import ConfigError

__all__ = [
    "ChoiceTrial",
    "Chooser",
    "Decision",
    "FunctionSpace",
    "Sample",
    "SearchSpace",
    "Trial",
    "as_space",
    "enumerate_size",
]

Scalar = bool | int | float | str | None


@runtime_checkable
class Trial(Protocol):
    """What a space may ask: the subset of ``optuna.Trial`` that spaces use."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1) -> int: ...


Chooser = Callable[[str, tuple[Any, ...]], int]
"""Picks the index of one of ``choices`` for the decision ``name``."""


@dataclass(frozen=True)
class Decision:
    """One choice made while running a space: its name, the options and the index taken."""

    name: str
    choices: tuple[Any, ...]
    index: int

    @property
    def value(self) -> Any:
        return self.choices[self.index]


class ChoiceTrial:
    """A trial that turns every ``suggest_*`` into a choice among options, made by ``chooser``.

    It records the decisions in the order the space made them, which the strategies need: the
    controller replays them to score a sample, evolution mutates one of them.

    Example:
        >>> trial = ChoiceTrial(lambda name, choices: len(choices) - 1)
        >>> trial.suggest_int("depth", 1, 3), trial.suggest_categorical("op", ["a", "b"])
        (3, 'b')
        >>> trial.params
        {'depth': 3, 'op': 'b'}
    """

    def __init__(self, chooser: Chooser) -> None:
        self._chooser = chooser
        self.decisions: list[Decision] = []
        self._by_name: dict[str, Decision] = {}

    @property
    def params(self) -> dict[str, Any]:
        return {d.name: d.value for d in self.decisions}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        options = tuple(choices)
        if not options:
            raise ConfigError(f"search space: decision {name!r} has no choices.")
        for value in options:
            if not isinstance(value, Scalar):
                raise ConfigError(
                    f"search space: decision {name!r} offers {value!r}; choices must be None, "
                    "bool, int, float or str (plain JSON), as in Optuna."
                )
        seen = self._by_name.get(name)
        if seen is not None:
            if seen.choices != options:
                raise ConfigError(
                    f"search space: decision {name!r} was asked twice with different choices "
                    f"({list(seen.choices)} then {list(options)}): give each decision its own name."
                )
            return seen.value
        index = self._chooser(name, options)
        if not 0 <= index < len(options):
            raise ValueError(f"chooser returned index {index} for {len(options)} choices")
        decision = Decision(name, options, index)
        self.decisions.append(decision)
        self._by_name[name] = decision
        return decision.value

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        if high < low or step < 1:
            raise ConfigError(f"search space: suggest_int({name!r}, {low}, {high}, step={step}).")
        return self.suggest_categorical(name, range(low, high + 1, step))


@dataclass(frozen=True)
class Sample:
    """An architecture drawn from a space, with the decisions that produced it."""

    params: dict[str, Any]
    arch: Any
    decisions: tuple[Decision, ...] = field(default=(), repr=False)


class SearchSpace:
    """Base of search spaces: subclasses implement :meth:`define` (define-by-run).

    Example:
        >>> class Tiny(SearchSpace):
        ...     def define(self, trial):
        ...         depth = trial.suggest_int("depth", 1, 2)
        ...         ops = ["conv", "pool"]
        ...         return [trial.suggest_categorical(f"op{i}", ops) for i in range(depth)]
        >>> Tiny().size()
        6
        >>> Tiny().sample(seed=0).arch == Tiny().sample(seed=0).arch
        True
    """

    def define(self, trial: Trial) -> Any:
        """Ask ``trial`` for every choice and return the architecture (JSON-like data)."""
        raise NotImplementedError

    def __call__(self, trial: Trial) -> Any:
        return self.define(trial)

    def run(self, chooser: Chooser) -> Sample:
        """Run the space with ``chooser`` making every decision."""
        trial = ChoiceTrial(chooser)
        arch = self.define(trial)
        return Sample(trial.params, arch, tuple(trial.decisions))

    def sample(self, seed: int | None = None, *, rng: random.Random | None = None) -> Sample:
        """A uniformly random choice at every decision, reproducible by ``seed``."""
        gen = rng or random.Random(seed)
        return self.run(lambda _name, choices: gen.randrange(len(choices)))

    def replay(self, params: Mapping[str, Any], rng: random.Random | None = None) -> Sample:
        """The sample that takes ``params``' values; decisions they lack are drawn from ``rng``."""
        gen = rng or random.Random(0)

        def choose(name: str, choices: tuple[Any, ...]) -> int:
            if name in params and params[name] in choices:
                return choices.index(params[name])
            return gen.randrange(len(choices))

        return self.run(choose)

    def extreme(self, largest: bool, rng: random.Random | None = None) -> Sample:
        """The largest (or smallest) network: the highest (lowest) numeric option everywhere.

        Decisions whose options are not all numbers (block types, skip flags) are drawn from
        ``rng``; this is the sandwich rule's "max" and "min" network.
        """
        gen = rng or random.Random(0)

        def choose(_name: str, choices: tuple[Any, ...]) -> int:
            numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)
            if not numeric:
                return gen.randrange(len(choices))
            pick = max if largest else min
            return choices.index(pick(choices))

        return self.run(choose)

    def size(self) -> int:
        """The number of distinct architectures (decision paths); exact.

        Subclasses with a closed form override this; the default enumerates every path and
        refuses beyond ten million of them.
        """
        return enumerate_size(self)

    def decisions(self, samples: int = 64, seed: int = 0) -> dict[str, tuple[Any, ...]]:
        """Every decision seen in ``samples`` random draws and the extremes, with its options."""
        gen = random.Random(seed)
        seen: dict[str, tuple[Any, ...]] = {}
        draws = [self.extreme(True, gen), self.extreme(False, gen)]
        draws += [self.sample(rng=gen) for _ in range(samples)]
        for draw in draws:
            for d in draw.decisions:
                seen.setdefault(d.name, d.choices)
        return seen

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: the space's name, size and decisions, and a sample."""
        return {
            "space": type(self).__name__,
            "size": self.size(),
            "decisions": {k: list(v) for k, v in self.decisions().items()},
            "sample": self.sample(seed=0).arch,
        }


class FunctionSpace(SearchSpace):
    """A plain function ``fn(trial) -> architecture`` used as a space."""

    def __init__(self, fn: Callable[[Trial], Any]) -> None:
        self.fn = fn

    def define(self, trial: Trial) -> Any:
        return self.fn(trial)


def as_space(space: SearchSpace | Callable[[Trial], Any]) -> SearchSpace:
    """A :class:`SearchSpace` as is, a function wrapped in :class:`FunctionSpace`."""
    if isinstance(space, SearchSpace):
        return space
    if callable(space):
        return FunctionSpace(space)
    raise ConfigError(f"a search space is a SearchSpace or a function of a trial, got {space!r}.")


def enumerate_size(space: SearchSpace, limit: int = 10_000_000) -> int:
    """Count the decision paths of ``space`` by walking them all (an odometer over indices).

    Raises:
        ConfigError: more than ``limit`` paths (give the space a closed-form ``size``).

    Example:
        >>> enumerate_size(as_space(lambda t: t.suggest_int("a", 0, 4)))
        5
    """
    prefix: list[int] = []
    count = 0
    while True:
        trace = space.run(_follow(prefix)).decisions
        count += 1
        if count > limit:
            raise ConfigError(
                f"the search space has more than {limit} architectures: too many to enumerate; "
                "give it a size() method with the closed form."
            )
        indices = [d.index for d in trace]
        widths = [len(d.choices) for d in trace]
        # Advance the last decision that has an option left; later ones restart at 0.
        pos = len(indices) - 1
        while pos >= 0 and indices[pos] + 1 >= widths[pos]:
            pos -= 1
        if pos < 0:
            return count
        prefix = [*indices[:pos], indices[pos] + 1]


def _follow(prefix: Sequence[int]) -> Chooser:
    step = iter(prefix)

    def choose(_name: str, _choices: tuple[Any, ...]) -> int:
        return next(step, 0)

    return choose
