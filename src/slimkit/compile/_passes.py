"""Inference passes: rule-based rewrites of a model, each checked against the model before it.

A pass takes a model (and an example batch to capture its graph with) and returns a rewritten
copy that computes the same function in eval mode. :func:`apply_passes` runs a list of them by
name, checks every one numerically (max abs difference to the model before the pass, fp32), and
records what each changed; a pass that breaks the tolerance is an error, never silently kept.

The passes edit modules, not code, so the result is still the registered model with structure
edits, and it saves and reloads without pickle:

- ``remove_dropout``: dropout modules become ``nn.Identity`` (they are the identity in eval mode).
- ``fold_batchnorm``: batch norm folded into the Conv/Linear before it (:mod:`._fuse`).
- ``fuse_activations``: a Conv/Linear whose only user is a ReLU-family activation module called
  once becomes a ``Fused*`` subclass that applies the activation in place on its own output; the
  activation module becomes ``nn.Identity``. One module call and one intermediate tensor fewer
  in eager mode; exported graphs are unchanged (runtimes fuse these pairs themselves).

Constant folding happens where constants exist: in the ONNX export (onnxscript's optimizer) and
in the runtimes' graph optimizers, which :mod:`slimkit.compile` configures.

Example:
    >>> import torch
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_tiny").eval()
    >>> fused, records = apply_passes(model, torch.zeros(1, 1, 28, 28))
    >>> [(r.name, r.changed > 0) for r in records]
    [('remove_dropout', False), ('fold_batchnorm', True), ('fuse_activations', True)]
    >>> max(r.max_abs_error for r in records) <= 1e-5
    True
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimkit._runtime import log
from slimkit.compile._fuse import _module_path, _packet, fold_batchnorm
from slimkit.errors import ConfigError, SlimkitError
from slimkit.graph import capture
from slimkit.measure._runner import _as_tensor
from slimkit.serialize import register_module_type

__all__ = [
    "DEFAULT_PASSES",
    "FusedConv1d",
    "FusedConv2d",
    "FusedLinear",
    "PassCheckError",
    "PassRecord",
    "apply_passes",
    "fuse_activations",
    "list_passes",
    "remove_dropout",
]

DEFAULT_PASSES: tuple[str, ...] = ("remove_dropout", "fold_batchnorm", "fuse_activations")
"""The passes :func:`apply_passes` runs when none are named, in this order."""

Pass = Callable[[nn.Module, Tensor], tuple[nn.Module, int]]
_PASSES: dict[str, Pass] = {}


class PassCheckError(SlimkitError, RuntimeError):
    """A pass changed the model's outputs by more than the tolerance."""


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: how many rewrites, its exactness check, and its time."""

    name: str
    changed: int
    max_abs_error: float
    seconds: float


def _register(name: str) -> Callable[[Pass], Pass]:
    def deco(fn: Pass) -> Pass:
        _PASSES[name] = fn
        return fn

    return deco


def list_passes() -> list[str]:
    """Names of the passes :func:`apply_passes` knows."""
    return list(_PASSES)


def apply_passes(
    model: nn.Module,
    example_inputs: Tensor,
    passes: Sequence[str] = DEFAULT_PASSES,
    *,
    atol: float = 1e-5,
) -> tuple[nn.Module, list[PassRecord]]:
    """Run ``passes`` in order on an eval-mode copy of ``model``, checking each one.

    Args:
        model: The model; it is not modified.
        example_inputs: A real input batch: the graph is captured with it and every pass's
            output is compared with the model before it on it.
        passes: Pass names (see :func:`list_passes`).
        atol: Largest allowed max abs difference per pass (fp32).

    Returns:
        The rewritten model (eval mode) and one :class:`PassRecord` per pass.

    Raises:
        ConfigError: An unknown pass name (before any work).
        PassCheckError: A pass changed the outputs by more than ``atol``.
    """
    unknown = [p for p in passes if p not in _PASSES]
    if unknown:
        raise ConfigError(f"unknown compile pass(es) {unknown}; known passes: {list_passes()}.")
    current = copy.deepcopy(model).eval()
    records = []
    with torch.no_grad():
        before = _as_tensor(current(example_inputs)).float()
        for name in passes:
            start = time.perf_counter()
            rewritten, changed = _PASSES[name](current, example_inputs)
            rewritten.eval()
            after = _as_tensor(rewritten(example_inputs)).float()
            error = float((after - before).abs().max()) if after.numel() else 0.0
            if error > atol:
                raise PassCheckError(
                    f"compile pass {name!r} changed the outputs by {error:.3g} (> {atol:g}); "
                    f"leave it out of `passes` and report the model to slimkit's issue tracker."
                )
            records.append(PassRecord(name, changed, error, time.perf_counter() - start))
            current, before = rewritten, after
    return current, records


@_register("remove_dropout")
def remove_dropout(model: nn.Module, example_inputs: Tensor | None = None) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose dropout modules are ``nn.Identity``; and how many there were.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        >>> clean, n = remove_dropout(net)
        >>> n, type(clean[1]).__name__
        (1, 'Identity')
    """
    del example_inputs  # dropout is found by module type; no graph is needed
    model = copy.deepcopy(model)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.dropout._DropoutNd | nn.Dropout) and name
    ]
    for name in names:
        _replace(model, name, nn.Identity())
    return model, len(names)


@_register("fold_batchnorm")
def _fold_batchnorm_pass(model: nn.Module, example_inputs: Tensor) -> tuple[nn.Module, int]:
    pairs: list = []
    return fold_batchnorm(model, example_inputs, folded=pairs), len(pairs)


# ---- activation fusion -------------------------------------------------------------------------

_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.SiLU: "silu",
    nn.GELU: "gelu",
}


def _activate(x: Tensor, activation: str) -> Tensor:
    # In place: the layer's output is a fresh tensor that nothing else has seen.
    if activation == "relu":
        return x.relu_()
    if activation == "relu6":
        return F.hardtanh_(x, 0.0, 6.0)
    if activation == "hardswish":
        return F.hardswish(x, inplace=True)
    if activation == "silu":
        return F.silu(x, inplace=True)
    if activation == "gelu":
        return F.gelu(x)
    raise SlimkitError(f"unknown fused activation {activation!r}")


@register_module_type
class FusedConv1d(nn.Conv1d):
    """``nn.Conv1d`` followed by its activation (attribute ``activation``) in one module."""

    activation: str

    def forward(self, x: Tensor) -> Tensor:
        return _activate(super().forward(x), self.activation)


@register_module_type
class FusedConv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by its activation (attribute ``activation``) in one module."""

    activation: str

    def forward(self, x: Tensor) -> Tensor:
        return _activate(super().forward(x), self.activation)


@register_module_type
class FusedLinear(nn.Linear):
    """``nn.Linear`` followed by its activation (attribute ``activation``) in one module."""

    activation: str

    def forward(self, x: Tensor) -> Tensor:
        return _activate(super().forward(x), self.activation)


_FUSED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: FusedConv1d,
    nn.Conv2d: FusedConv2d,
    nn.Linear: FusedLinear,
}
_LAYER_PACKETS = {
    torch.ops.aten.conv1d,
    torch.ops.aten.conv2d,
    torch.ops.aten.convolution,
    torch.ops.aten.linear,
}


@_register("fuse_activations")
def fuse_activations(model: nn.Module, example_inputs: Tensor) -> tuple[nn.Module, int]:
    """A copy of ``model`` with each (layer, activation module) pair fused; and the count.

    A pair qualifies when the layer (``Conv1d``, ``Conv2d``, ``Linear``, exactly that class) is
    called once and its output's only user is a ReLU/ReLU6/Hardswish/SiLU/GELU module that is
    called only there. An activation module shared by several call sites (a ResNet block's one
    ``relu`` used twice) stays, because its other calls would be lost.
    """
    model = copy.deepcopy(model)
    captured = capture(model, example_inputs)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in captured.graph.nodes:
        path = _module_path(node)
        if path is not None and node.op == "call_function":
            calls[path] = calls.get(path, 0) + 1
    pairs = []
    for node in captured.graph.nodes:
        if _packet(node) not in _LAYER_PACKETS or len(node.users) != 1:
            continue
        layer_name = _module_path(node)
        (user,) = node.users
        act_name = _module_path(user)
        if layer_name is None or act_name is None or act_name == layer_name:
            continue
        layer, act = modules.get(layer_name), modules.get(act_name)
        if type(layer) not in _FUSED or type(act) not in _ACTIVATIONS:
            continue
        if isinstance(act, nn.GELU) and act.approximate != "none":
            continue
        if calls.get(act_name) != 1 or _calls_of_layer(captured, layer_name) != 1:
            continue
        pairs.append((layer_name, act_name))
    for layer_name, act_name in pairs:
        layer = model.get_submodule(layer_name)
        activation = _ACTIVATIONS[type(model.get_submodule(act_name))]
        layer.__class__ = _FUSED[type(layer)]
        layer.activation = activation
        _replace(model, act_name, nn.Identity())
    log(f"fuse_activations: fused {len(pairs)} (layer, activation) pair(s)")
    return model, len(pairs)


def _calls_of_layer(captured: object, layer_name: str) -> int:
    graph = captured.graph  # type: ignore[attr-defined]
    return sum(
        1
        for node in graph.nodes
        if _packet(node) in _LAYER_PACKETS and _module_path(node) == layer_name
    )


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
