"""Intermediate features by module name: forward hooks, adapters, shape checks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from slimkit.errors import ConfigError

__all__ = ["build_adapter", "capture_features", "check_module_names"]


def check_module_names(model: nn.Module, names: Iterable[str], role: str) -> None:
    """Raise :class:`ConfigError` for every name that is no module path of ``model``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
        >>> check_module_names(net, ["1.1"], "student")
        >>> check_module_names(net, ["1.2"], "student")
        Traceback (most recent call last):
        ...
        slimkit.errors.ConfigError: the student has no module '1.2' (did you mean '1.1', ...?); ...
    """
    known = [name for name, _ in model.named_modules() if name]
    lines = []
    for name in dict.fromkeys(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            lines.append(f"the {role} has no module {name!r}{hint}")
    if lines:
        listed = ", ".join(known[:40]) + (", ..." if len(known) > 40 else "")
        raise ConfigError(
            "; ".join(lines) + f"; module names are paths as in named_modules(): {listed}."
        )


@contextmanager
def capture_features(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward of ``model`` stores the output of each named module.

    Forward hooks reach any depth (``stages.1.conv2``) and any module type, so they work on a
    pruned or decomposed copy of a model as long as the path still exists. A module called
    several times in one forward keeps its last output; a module returning a tuple (a
    transformer layer) gives its first tensor. The hooks are removed on leaving the block.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
        >>> with capture_features(net, ["1.0"]) as features:
        ...     _ = net(torch.ones(5, 3))
        >>> features["1.0"].shape
        torch.Size([5, 4])
    """
    store: dict[str, Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(_storer(store, name))
        for name in dict.fromkeys(names)
    ]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _storer(store: dict[str, Tensor], name: str) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store[name] = _first_tensor(output, name)

    return hook


def _first_tensor(output: Any, name: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ConfigError(
        f"module {name!r} returns {type(output).__name__}, not a tensor: choose a module whose "
        "output is a feature tensor."
    )


def build_adapter(
    kind: str, student_shape: Sequence[int], teacher_shape: Sequence[int], where: str
) -> nn.Module:
    """The module that maps a student feature to the teacher's width (``nn.Identity`` if none).

    ``hint`` features of different widths get a 1x1 convolution (``[N, C, H, W]``) or a linear
    layer on the last dimension (any other shape); ``attention`` compares maps of any widths.

    Example:
        >>> build_adapter("hint", (8, 16, 7, 7), (8, 64, 7, 7), "5 -> stages.1")
        Conv2d(16, 64, kernel_size=(1, 1), stride=(1, 1))
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if kind == "attention":
        if len(s) != 4 or len(t) != 4:
            raise ConfigError(
                f"attention transfer ({where}) needs [N, C, H, W] features; got {list(s)} and "
                f"{list(t)}: use kind 'hint' or choose convolutional layers."
            )
        return nn.Identity()
    if len(s) == 4 and len(t) == 4:
        return nn.Identity() if s[1] == t[1] else nn.Conv2d(s[1], t[1], kernel_size=1)
    if len(s) != len(t) or s[1:-1] != t[1:-1]:
        raise ConfigError(
            f"hint {where}: the student's feature {list(s)} and the teacher's {list(t)} differ in "
            "more than their last (width) dimension; choose layers whose outputs line up."
        )
    return nn.Identity() if s[-1] == t[-1] else nn.Linear(s[-1], t[-1])
