"""Rule-based fusion passes on the shared graph; the first one folds batch norm into its layer.

``fold_batchnorm`` is the first of these passes: it finds, on the graph that
:func:`slimkit.graph.capture` exports, every ``Conv1d``/``Conv2d``/``Linear`` whose output feeds
a batch norm and nothing else, and folds the norm's statistics and affine into the layer's
weight and bias. In eval mode the result computes the same function with one operation less
per pair, and quantization then sees the weights the int8 kernel really multiplies with.

Example:
    >>> import torch
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_tiny").eval()
    >>> folded = fold_batchnorm(model, torch.zeros(1, 1, 28, 28))
    >>> type(folded[1]).__name__, folded[0].bias is not None
    ('Identity', True)
    >>> x = torch.randn(2, 1, 28, 28)
    >>> bool((folded(x) - model(x)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.fx import Node

from slimkit._runtime import log
from slimkit.graph import CapturedGraph, capture

__all__ = ["FoldedPair", "batchnorm_pairs", "fold_batchnorm"]

_aten = torch.ops.aten
_LAYER_OPS = {_aten.conv1d, _aten.conv2d, _aten.convolution, _aten.linear}
_NORM_OPS = {
    _aten.batch_norm,
    _aten._native_batch_norm_legit_no_training,
    _aten._native_batch_norm_legit,
    _aten.native_batch_norm,
}
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class FoldedPair:
    """A layer and the batch norm folded into it (module paths)."""

    layer: str
    norm: str


def batchnorm_pairs(
    model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]
) -> list[FoldedPair]:
    """The (layer, batch norm) pairs that :func:`fold_batchnorm` folds, in graph order.

    A pair qualifies when the layer is a ``Conv1d``, ``Conv2d`` (not transposed) or ``Linear``
    module called once, its output's only user is a batch norm module (with running statistics)
    called once, and the norm's channels are the layer's outputs (for ``Linear``: a 2-D output).
    """
    captured = capture(model, example_inputs)
    modules = dict(model.named_modules())
    uses: dict[str, int] = {}
    for node in captured.graph.nodes:
        if node.op == "placeholder" and node.name in captured.param_of_input:
            uses[captured.param_of_input[node.name]] = len(node.users)
    pairs = []
    for node in captured.graph.nodes:
        if _packet(node) not in _LAYER_OPS or len(node.users) != 1:
            continue
        layer = _owner(captured, node.args[1], modules, _FOLDABLE)
        (user,) = node.users
        if layer is None or _packet(user) not in _NORM_OPS or user.args[0] is not node:
            continue
        norm = _norm_owner(captured, user, modules)
        if norm is None or uses.get(f"{layer}.weight") != 1:
            continue  # a shared layer: folding would change its other uses
        if uses.get(f"{norm}.running_mean") != 1:
            continue
        if _packet(node) is _aten.convolution and node.args[6]:
            continue  # transposed: its weight's first dim is the input channels
        out = node.meta.get("val")
        if isinstance(modules[layer], nn.Linear) and (out is None or out.ndim != 2):
            continue  # BatchNorm1d on [N, L, F] normalizes L, not the features
        if _module_path(node) != layer or _module_path(user) != norm:
            continue  # called from another module's forward: replacing it would not be seen
        pairs.append(FoldedPair(layer, norm))
    return pairs


def fold_batchnorm(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    folded: list[FoldedPair] | None = None,
) -> nn.Module:
    """A copy of ``model`` with each batch norm folded into the layer before it.

    For every pair of :func:`batchnorm_pairs`, with ``s = gamma / sqrt(running_var + eps)``:
    ``weight <- weight * s`` (per output channel) and ``bias <- (bias - running_mean) * s +
    beta`` (a bias is created if the layer had none); the norm becomes ``nn.Identity``. This is
    exact for eval-mode batch norm (computed in float64, then rounded once); training the folded
    model no longer normalizes by batch statistics.

    Args:
        model: The model; it is not modified.
        example_inputs: An input batch to capture the graph with (one sample is enough).
        folded: If given, the folded pairs (:class:`FoldedPair`) are appended to it.

    Returns:
        The folded copy, in the input model's train/eval mode. Saved with
        :func:`slimkit.serialize.save_model`, it reloads without pickle (the created biases and
        the identities are structure edits).
    """
    model = copy.deepcopy(model)
    pairs = batchnorm_pairs(model, example_inputs)
    for pair in pairs:
        _fold(model.get_submodule(pair.layer), model.get_submodule(pair.norm))
        parent, _, child = pair.norm.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    if folded is not None:
        folded.extend(pairs)
    log(f"fold_batchnorm: folded {len(pairs)} batch norm(s) into the layer before them")
    return model


@torch.no_grad()
def _fold(layer: nn.Module, norm: nn.Module) -> None:
    weight: Tensor = layer.weight
    assert norm.running_mean is not None and norm.running_var is not None  # checked by the caller
    mean, var = norm.running_mean.double(), norm.running_var.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    weight.copy_((weight.double() * scale.view(shape)).to(weight.dtype))
    new_bias = ((bias - mean) * scale + beta).to(weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


def _packet(node: Node) -> object:
    return getattr(node.target, "overloadpacket", None) if node.op == "call_function" else None


def _owner(
    captured: CapturedGraph,
    arg: object,
    modules: dict[str, nn.Module],
    classes: tuple[type[nn.Module], ...],
    attr: str = "weight",
) -> str | None:
    """The module whose ``attr`` is the graph input ``arg``, if it is one of ``classes``."""
    if not isinstance(arg, Node) or arg.op != "placeholder":
        return None
    fqn = captured.param_of_input.get(arg.name)
    if fqn is None:
        return None
    name, _, leaf = fqn.rpartition(".")
    module = modules.get(name)
    if leaf != attr or type(module) not in classes:
        return None
    return name


def _norm_owner(captured: CapturedGraph, node: Node, modules: dict[str, nn.Module]) -> str | None:
    # running_mean (argument 3 of every batch-norm op) names the module even without affine.
    args = list(node.args) + [None] * 5
    name = _owner(captured, args[3], modules, (nn.BatchNorm1d, nn.BatchNorm2d), "running_mean")
    if name is None:
        return None
    norm = modules[name]
    if norm.running_var is None:
        return None
    for position, attr in ((1, "weight"), (2, "bias"), (4, "running_var")):
        tensor = getattr(norm, attr)
        arg = args[position]
        if (tensor is None) != (arg is None) or (
            tensor is not None and _owner(captured, arg, modules, (type(norm),), attr) != name
        ):
            return None  # mixed tensors of several modules: not a plain module call
    return name


def _module_path(node: Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None
