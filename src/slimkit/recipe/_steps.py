"""The step registry: each recipe step name maps to a frozen config class and a handler."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from slimkit.config import Config
from slimkit.data import DataSplits
from slimkit.errors import ConfigError

if TYPE_CHECKING:
    from slimkit.measure import Runner
    from slimkit.recipe._schema import Recipe

__all__ = [
    "BUILTIN_STEP_MODULES",
    "StepContext",
    "StepHandler",
    "StepInfo",
    "StepOutput",
    "get_step",
    "list_steps",
    "register_step",
]

BUILTIN_STEP_MODULES: tuple[str, ...] = (
    "slimkit.train._step",
    "slimkit.prune._step",
    "slimkit.prune._sparse_step",
    "slimkit.quantize._step",
    "slimkit.compile._step",
    "slimkit.decompose._step",
    "slimkit.distill._step",
    "slimkit.search._step",
)
"""Modules that register the built-in steps when imported; each technique adds its own here."""

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass
class StepOutput:
    """What a step handler returns: the new model and facts about the step for the report.

    Attributes:
        model: The model after the step.
        info: JSON-ready details (training history, pruned channels, ...) shown in the report.
        artifact: What really runs after this step when it is not the module itself (an int8
            ONNX Runtime session, a compiled backend): the report measures it instead.
        reference: The float model on the artifact's runtime: the stage's speed-up is measured
            against it (same runtime, same run) instead of against the baseline module.
    """

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    artifact: Runner | None = None
    reference: Runner | None = None


@dataclass(frozen=True)
class StepContext:
    """Everything a step may need besides the model and its config.

    Attributes:
        data: The recipe's data set, loaded once for all steps.
        seed: The recipe's seed, for steps whose config has no seed of its own.
        step_dir: A folder, already created, for the step's own artifacts.
        models_before: ``(step name, model before that step)`` for every earlier step, in order,
            so that ``distill`` can take the model before ``prune`` as its teacher.
        recipe: The whole recipe being run.
        index: This step's position in the recipe, from 1.
        name: This step's name.
        artifact_before: What the previous step's model really runs as, when it is not the
            module itself (the int8 ONNX Runtime session of ``quantize``), else ``None``;
            ``compile`` runs it on its runtimes too.
    """

    data: DataSplits
    seed: int
    step_dir: Path
    models_before: tuple[tuple[str, nn.Module], ...]
    recipe: Recipe
    index: int
    name: str
    artifact_before: Runner | None = None

    def model_before(self, step_name: str) -> nn.Module:
        """The model as it was before the most recent earlier step called ``step_name``.

        Raises:
            ConfigError: no earlier step has that name.
        """
        for name, model in reversed(self.models_before):
            if name == step_name:
                return model
        earlier = [name for name, _ in self.models_before] or ["(none)"]
        raise ConfigError(
            f"step {self.index} ({self.name}) needs the model before a {step_name!r} step, but the "
            f"earlier steps are: {', '.join(earlier)}."
        )


StepHandler = Callable[[nn.Module, Any, StepContext], "StepOutput | nn.Module"]
"""``handler(model, config, ctx)``: returns a :class:`StepOutput` or a bare model."""


@dataclass(frozen=True)
class StepInfo:
    """A registered step: its name, config class, handler and one-line description."""

    name: str
    config_cls: type[Config]
    handler: StepHandler
    description: str


_STEPS: dict[str, StepInfo] = {}
_builtins_loaded = False


def register_step(name: str, config_cls: type[Config]) -> Callable[[StepHandler], StepHandler]:
    """Register ``handler(model, config, ctx)`` as the recipe step ``name``.

    The handler receives a validated instance of ``config_cls`` and a model it may modify (the
    runner hands it a copy). Its docstring's first line describes the step.

    Args:
        name: The key used in recipes: lower case letters, digits, ``_`` and ``-``.
        config_cls: A frozen :class:`~slimkit.config.Config` subclass describing the step's options.

    Raises:
        ConfigError: the name is malformed or already taken by another handler, or the config
            class is not a frozen Config.

    Example:
        >>> from slimkit.config import Config
        >>> class ScaleConfig(Config):
        ...     factor: float = 1.0
        >>> @register_step("doc_scale", ScaleConfig)
        ... def doc_scale(model, config, ctx):
        ...     '''Multiply every parameter by a constant.'''
        ...     for p in model.parameters():
        ...         p.data.mul_(config.factor)
        ...     return StepOutput(model, {"factor": config.factor})
        >>> "doc_scale" in list_steps()
        True
    """
    _check_step_name(name)
    _check_config_cls(name, config_cls)

    def deco(handler: StepHandler) -> StepHandler:
        _check_not_taken(name, handler)
        doc = (inspect.getdoc(handler) or "").splitlines()
        _STEPS[name] = StepInfo(name, config_cls, handler, doc[0] if doc else "")
        return handler

    return deco


def list_steps() -> list[str]:
    """Names of the registered steps, built-in ones included, sorted.

    Example:
        >>> "train" in list_steps()
        True
    """
    _load_builtins()
    return sorted(_STEPS)


def get_step(name: str) -> StepInfo:
    """The :class:`StepInfo` registered under ``name``.

    Raises:
        ConfigError: no such step; the message lists the registered ones.

    Example:
        >>> get_step("train").config_cls.__name__
        'TrainConfig'
    """
    _load_builtins()
    try:
        return _STEPS[name]
    except KeyError:
        raise ConfigError(unknown_step_message(name)) from None


def unknown_step_message(name: object) -> str:
    """The error text for an unknown step: the registered names and the closest match."""
    names = list_steps()
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown step {name!r}{hint}; registered steps: {', '.join(names)}"


def _load_builtins() -> None:
    # Imported on first use, not at import time: the step modules import slimkit.recipe themselves.
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in BUILTIN_STEP_MODULES:
        importlib.import_module(module)
    _builtins_loaded = True


def _check_step_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"step name {name!r} is not allowed: use lower case letters, digits, '_' and '-', "
            "starting with a letter."
        )


def _check_config_cls(name: str, config_cls: type[Config]) -> None:
    if not (isinstance(config_cls, type) and issubclass(config_cls, Config)):
        raise ConfigError(f"step {name!r}: its config class must subclass slimkit.config.Config.")
    if not config_cls.model_config.get("frozen"):
        raise ConfigError(f"step {name!r}: its config class {config_cls.__name__} must be frozen.")


def _check_not_taken(name: str, handler: StepHandler) -> None:
    existing = _STEPS.get(name)
    if existing is None:
        return
    # Re-running the same definition (a reloaded module, a notebook cell) replaces it silently.
    if _qualified(existing.handler) != _qualified(handler):
        raise ConfigError(
            f"step {name!r} is already registered by {_qualified(existing.handler)}; "
            "choose another name."
        )


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
