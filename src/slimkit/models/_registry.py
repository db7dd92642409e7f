"""Registry of model builders keyed by name, in the manner of timm."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimkit.errors import ConfigError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model: how to build it and what it takes as input."""

    name: str
    builder: Builder
    input_shape: tuple[int, ...]
    num_classes: int | None
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    train_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a registered model: its name and the keyword arguments it was built with.

    Attached to every model that :func:`create_model` returns, as ``model.slimkit_spec``, so that
    a saved model can be rebuilt from data instead of pickle.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    *,
    input_shape: tuple[int, ...],
    num_classes: int | None = None,
    train_defaults: dict[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Register a builder under its function name; its docstring's first line describes it.

    ``train_defaults`` are the :class:`~slimkit.train.TrainConfig` fields of the model's reference
    training (what ``slimkit train`` uses unless told otherwise).

    Example:
        >>> from torch import nn
        >>> @register_model(input_shape=(4,), num_classes=2)
        ... def doc_linear(hidden: int = 8) -> nn.Module:
        ...     '''A two-layer perceptron.'''
        ...     return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        >>> create_model("doc_linear", hidden=3)[0].out_features
        3
    """

    def deco(fn: Builder) -> Builder:
        params = inspect.signature(fn).parameters
        defaults = {
            k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty
        }
        doc = (inspect.getdoc(fn) or "").splitlines()
        _MODELS[fn.__name__] = ModelInfo(
            name=fn.__name__,
            builder=fn,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            description=doc[0] if doc else "",
            defaults=defaults,
            train_defaults=dict(train_defaults or {}),
        )
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}."
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` override the builder's defaults.

    The model carries ``slimkit_spec`` (a :class:`ModelSpec`) so it can be saved without pickle.
    """
    info = model_info(name)
    unknown = set(kwargs) - set(info.defaults)
    if unknown:
        raise ConfigError(
            f"model {name!r} has no argument(s) {sorted(unknown)}; "
            f"it takes: {sorted(info.defaults)}."
        )
    model = info.builder(**kwargs)
    # Every argument, defaults included: a later change of a default must not change how a
    # saved model is rebuilt.
    model.slimkit_spec = ModelSpec(name, {**info.defaults, **kwargs})
    return model
