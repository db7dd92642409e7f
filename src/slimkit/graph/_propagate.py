"""Walk a captured graph once, giving every tensor channel labels and recording couplings.

One rule per ATen operation family. An operation without a rule is an error that names it and
its module, unless that module is ignored: then every channel it touches is fixed. Nothing is
ever silently assumed to keep channels.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.fx import Node

from slimkit.errors import SlimkitError
from slimkit.graph._capture import CapturedGraph
from slimkit.graph._labels import (
    FIXED,
    UNTRACKED,
    IdSpace,
    Labels,
    ParamDim,
    ParamElements,
    untracked,
)

aten = torch.ops.aten


class UnsupportedOperationError(SlimkitError):
    """The dependency graph met an operation it does not understand."""


@dataclass
class Split:
    """A tracked dimension reshaped into ``[outer, inner]`` (e.g. hidden -> heads x head_dim).

    Which elements must go together depends on how the factors are used later, so the decision is
    taken after the walk: attention head splits remove whole heads; any other split is fixed.
    """

    ids: np.ndarray  # [outer, inner]
    is_heads: bool = False


@dataclass
class ModuleUse:
    """How a module's parameters were used, for updating its attributes after pruning."""

    kind: str
    params: dict[str, str] = field(default_factory=dict)  # role -> parameter FQN


@dataclass
class Propagation:
    """Everything the walk found."""

    space: IdSpace
    splits: list[Split]
    param_dims: dict[tuple[str, int], np.ndarray]
    module_uses: dict[str, list[ModuleUse]]
    notes: list[str]


Rule = Callable[["_Walker", Node], Any]
_RULES: dict[Any, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` for the ATen operations ``names`` (those this PyTorch lacks are skipped)."""

    def deco(fn: Rule) -> Rule:
        for name in names:
            packet = getattr(aten, name, None)
            if packet is not None:
                _RULES[packet] = fn
        return fn

    return deco


def propagate(captured: CapturedGraph, ignore: Sequence[str] = ()) -> Propagation:
    """Run the rules over ``captured``; modules whose path starts with an ``ignore`` entry are fixed."""
    walker = _Walker(captured, tuple(ignore))
    walker.run()
    return walker.result()


class _Walker:
    def __init__(self, captured: CapturedGraph, ignore: tuple[str, ...]) -> None:
        self.captured = captured
        self.ignore = ignore
        self.space = IdSpace()
        self.env: dict[Node, Any] = {}
        self.splits: list[Split] = []
        self.param_dims: dict[tuple[str, int], np.ndarray] = {}
        self.param_elems: dict[str, Labels] = {}
        self.module_uses: dict[str, list[ModuleUse]] = {}
        self.notes: list[str] = []
        self.node: Node | None = None

    # ----- walking -----
    def run(self) -> None:
        for node in self.captured.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                self.env[node] = self._placeholder(node)
            elif node.op == "get_attr":
                self.env[node] = self._constant(node)
            elif node.op == "call_function":
                self.env[node] = self._call(node)
            elif node.op == "output":
                for out in _flatten(node.args[0]):
                    if isinstance(out, Node) and isinstance(self.env.get(out), Labels):
                        self.space.fix(self.env[out].ids)

    def result(self) -> Propagation:
        for split in self.splits:
            if split.is_heads:
                for row in split.ids:
                    self.space.couple_all(row)
            else:
                self.space.fix(split.ids)
        return Propagation(self.space, self.splits, self.param_dims, self.module_uses, self.notes)

    def _call(self, node: Node) -> Any:
        if node.target is operator.getitem:
            container = self.env.get(node.args[0])
            return container[node.args[1]] if isinstance(container, list | tuple) else None
        module = self.module_path(node)
        packet = getattr(node.target, "overloadpacket", node.target)
        handler = _RULES.get(packet)
        if module is not None and self.is_ignored(module):
            return self._opaque(node)
        if handler is None:
            if not _produces_tensor(node):
                return None
            raise UnsupportedOperationError(
                f"the dependency graph does not know the operation {_op_name(node)} "
                f"(in module {module or '<top level>'!r}), so it cannot tell which channels it "
                f"couples. Pass ignore=[{(module or '').split('.')[0]!r}] (or a deeper module path) "
                "to keep the channels it touches."
            )
        return handler(self, node)

    def _opaque(self, node: Node) -> Any:
        """An ignored operation: fix every channel that enters it and every one it creates."""
        for arg in _flatten((node.args, node.kwargs)):
            lab = self.env.get(arg) if isinstance(arg, Node) else None
            if isinstance(lab, Labels):
                self.space.fix(lab.ids)
            elif (
                isinstance(arg, Node)
                and arg.op == "placeholder"
                and arg.name in self.captured.param_of_input
            ):
                self._fix_param(self.captured.param_of_input[arg.name])
        return self._fresh_output(node, FIXED)

    def _fresh_output(self, node: Node, value: int) -> Any:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return untracked(tuple(val.shape), value)
        if isinstance(val, list | tuple):
            return [
                untracked(tuple(v.shape), value) if isinstance(v, torch.Tensor) else None
                for v in val
            ]
        return None

    # ----- helpers for rules -----
    def module_path(self, node: Node) -> str | None:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return None
        return list(stack.values())[-1][0]

    def is_ignored(self, module: str) -> bool:
        return any(module == ig or module.startswith(ig + ".") for ig in self.ignore)

    def shape(self, node: Node) -> tuple[int, ...]:
        return tuple(int(s) for s in node.meta["val"].shape)

    def labels(self, arg: Any) -> Labels | None:
        """Labels of a tensor argument; parameters used directly get per-entry elements."""
        if not isinstance(arg, Node):
            return None
        if arg.op == "placeholder" and arg.name in self.captured.param_of_input:
            return self._param_elements(arg)
        lab = self.env.get(arg)
        return lab if isinstance(lab, Labels) else None

    def param_fqn(self, arg: Any) -> str | None:
        if isinstance(arg, Node) and arg.op == "placeholder":
            return self.captured.param_of_input.get(arg.name)
        return None

    def dim_ids(self, fqn: str, dim: int, size: int) -> np.ndarray:
        """The element ids of one dimension of a parameter (allocated on first use)."""
        key = (fqn, dim)
        if fqn in self.param_elems:
            raise UnsupportedOperationError(
                f"parameter {fqn!r} is used both as a layer weight and directly in arithmetic; "
                "ignore its module to keep it unpruned."
            )
        if key not in self.param_dims:
            self.param_dims[key] = self.space.alloc(size, ParamDim(fqn, dim, size))
        return self.param_dims[key]

    def weight_dims(self, arg: Any, role: str, dims: int = 2) -> list[np.ndarray] | None:
        """Ids of the first ``dims`` dimensions of a parameter; a computed weight is fixed instead.

        Later dimensions (kernel taps) are never channels and get no ids.
        """
        if arg is None:
            return None
        fqn = self.param_fqn(arg)
        shape = self.shape(arg)[:dims]
        if fqn is None:
            lab = self.labels(arg)
            if lab is not None:
                self.space.fix(lab.ids)
            return [np.full(n, FIXED, dtype=np.int64) for n in shape]
        return [self.dim_ids(fqn, d, n) for d, n in enumerate(shape)]

    def use(self, kind: str, **params: Any) -> None:
        module = self.module_path(self.node) if self.node is not None else None
        fqns = {role: self.param_fqn(arg) for role, arg in params.items()}
        self.module_uses.setdefault(module or "", []).append(
            ModuleUse(kind, {k: v for k, v in fqns.items() if v is not None})
        )

    def _placeholder(self, node: Node) -> Any:
        if node.name in self.captured.param_of_input:
            return None  # parameters get labels when an operation uses them
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return untracked(tuple(val.shape), FIXED)  # the model's inputs keep their channels
        return None

    def _constant(self, node: Node) -> Any:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return untracked(tuple(val.shape))
        return None

    def _param_elements(self, node: Node) -> Labels:
        fqn = self.captured.param_of_input[node.name]
        if fqn not in self.param_elems:
            if any(key[0] == fqn for key in self.param_dims):
                raise UnsupportedOperationError(
                    f"parameter {fqn!r} is used both as a layer weight and directly in arithmetic; "
                    "ignore its module to keep it unpruned."
                )
            shape = self.shape(node)
            kept = tuple(n if n > 1 else 1 for n in shape)
            ids = self.space.alloc(math.prod(kept), ParamElements(fqn, shape)).reshape(kept)
            self.param_elems[fqn] = Labels(ids, shape)
        return self.param_elems[fqn]

    def _fix_param(self, fqn: str) -> None:
        for (name, _), ids in self.param_dims.items():
            if name == fqn:
                self.space.fix(ids)
        if fqn in self.param_elems:
            self.space.fix(self.param_elems[fqn].ids)
        self.notes.append(f"kept {fqn}: its module is ignored")


# ---------------------------------------------------------------------------- rules


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, list | tuple):
        return [x for item in obj for x in _flatten(item)]
    if isinstance(obj, dict):
        return [x for item in obj.values() for x in _flatten(item)]
    return [obj]


def _op_name(node: Node) -> str:
    return str(getattr(node.target, "name", lambda: node.target)())


def _produces_tensor(node: Node) -> bool:
    val = node.meta.get("val")
    return any(isinstance(v, torch.Tensor) for v in _flatten(val))


def _arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _axis(ids: np.ndarray, dim: int) -> np.ndarray:
    """The labels along ``dim`` (taking index 0 of every other dim)."""
    index = [0] * ids.ndim
    index[dim] = slice(None)
    return ids[tuple(index)]


def _broadcast_union(w: _Walker, node: Node, operands: list[Labels | None]) -> Labels:
    """Elementwise operation: operands' channels are coupled where they meet."""
    out_shape = w.shape(node)
    ndim = len(out_shape)
    present = [op for op in operands if op is not None]
    if not present:
        return untracked(out_shape)
    aligned = [op.ids.reshape((1,) * (ndim - op.ids.ndim) + op.ids.shape) for op in present]
    collapsed = np.broadcast_shapes(*(a.shape for a in aligned))
    stacked = [np.broadcast_to(a, collapsed) for a in aligned]
    # A channel of one operand meets a broadcast (size-1) position of another: nothing to couple.
    result = stacked[0].copy()
    for other in stacked[1:]:
        w.space.couple(result, other)
        result = np.where(result >= 0, result, other)
    # An operand that cannot be sliced (a constant) and varies along a tracked dim fixes it.
    for op, a in zip(present, aligned, strict=True):
        real = (1,) * (ndim - len(op.shape)) + op.shape
        for d in range(ndim):
            if real[d] > 1 and a.shape[d] == 1 and collapsed[d] > 1 and op.ids.flat[0] == UNTRACKED:
                w.space.fix(_axis(result, d))
    return Labels(result, out_shape)


@rule(
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_",
    "mish", "mish_", "dropout", "dropout_", "feature_dropout", "alpha_dropout",
    "clone", "contiguous", "alias", "detach", "_to_copy", "to", "type_as",
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "erf",
    "clamp", "clamp_", "clamp_min", "clamp_max", "square", "sign",
    "softplus", "lift_fresh_copy", "zeros_like", "ones_like", "empty_like",
    "full_like", "bernoulli", "bernoulli_", "div_", "mul_", "add_", "sub_",
    "logical_not", "floor", "ceil", "round", "cos", "sin",
)  # fmt: skip
def _pointwise(w: _Walker, node: Node) -> Labels:
    tensors = [w.labels(a) for a in node.args if isinstance(a, Node)]
    tensors += [w.labels(a) for a in node.kwargs.values() if isinstance(a, Node)]
    return _broadcast_union(w, node, tensors)


@rule(
    "add", "sub", "mul", "div", "maximum", "minimum", "where", "pow",
    "eq", "ne", "lt", "le", "gt", "ge", "masked_fill", "masked_fill_",
    "logical_and", "logical_or", "rsub", "fmod", "remainder", "copy", "copy_",
    "addcmul", "addcdiv", "lerp", "bitwise_and", "bitwise_or",
)  # fmt: skip
def _binary(w: _Walker, node: Node) -> Labels:
    return _pointwise(w, node)


@rule("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d",
      "conv_transpose2d", "conv_transpose3d")  # fmt: skip
def _conv(w: _Walker, node: Node) -> Labels:
    x, weight, bias = node.args[0], node.args[1], _arg(node, 2, "bias")
    packet = node.target.overloadpacket
    if packet is aten.convolution:
        transposed, groups = bool(node.args[6]), int(node.args[8])
    else:
        transposed = packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
        groups = int(_arg(node, 7 if transposed else 6, "groups", 1))
    x_lab = w.labels(x)
    wd = w.weight_dims(weight, "weight")
    out_ids, in_ids = (wd[1], wd[0]) if transposed else (wd[0], wd[1])
    x_ch = x_lab.materialize([1])[(0, slice(None), *([0] * (x_lab.ids.ndim - 2)))]
    cin, cout = len(x_ch), w.shape(node)[1]
    per_in = cin // groups
    if transposed:
        out_ids_full = np.tile(out_ids, groups)  # transposed weight is [Cin, Cout/groups, ...]
    else:
        out_ids_full = out_ids
    if groups == 1:
        w.space.couple(x_ch, in_ids)
    elif per_in == 1 and not transposed:
        # Depthwise: input channel g feeds only group g's outputs; a whole group goes at once.
        per_out = cout // groups
        w.space.couple(np.repeat(x_ch, per_out), out_ids)
        w.space.fix(in_ids)
    else:
        # Grouped: keep the group count, remove the same position in every group.
        w.space.couple(x_ch.reshape(groups, per_in), in_ids.reshape(-1, per_in))
        for column in out_ids_full.reshape(groups, -1).T:
            w.space.couple_all(column)
    if bias is not None:
        w.space.couple(w.weight_dims(bias, "bias")[0], out_ids_full)
    w.use("conv", weight=weight, bias=bias)
    out_shape = w.shape(node)
    ids = out_ids_full.reshape((1, cout) + (1,) * (len(out_shape) - 2))
    return Labels(ids, out_shape)


@rule("linear")
def _linear(w: _Walker, node: Node) -> Labels:
    x, weight, bias = node.args[0], node.args[1], _arg(node, 2, "bias")
    x_lab = w.labels(x)
    out_ids, in_ids = w.weight_dims(weight, "weight")
    w.space.couple(_axis(x_lab.materialize([x_lab.ids.ndim - 1]), -1), in_ids)
    if bias is not None:
        w.space.couple(w.weight_dims(bias, "bias")[0], out_ids)
    w.use("linear", weight=weight, bias=bias)
    out_shape = w.shape(node)
    # Leading dims (batch, tokens) carry no channels; the last one is the output features.
    return Labels(out_ids.reshape((1,) * (len(out_shape) - 1) + (-1,)), out_shape)


@rule("batch_norm", "_native_batch_norm_legit_no_training", "instance_norm")
def _batch_norm(w: _Walker, node: Node) -> Any:
    x = node.args[0]
    x_lab = w.labels(x)
    channels = _axis(x_lab.materialize([1]), 1)
    for i in (1, 2, 3, 4):
        arg = _arg(node, i, "")
        if isinstance(arg, Node):
            w.space.couple(channels, w.weight_dims(arg, "bn")[0])
    w.use("batch_norm", weight=_arg(node, 1, ""), bias=_arg(node, 2, ""))
    if node.target.overloadpacket is aten._native_batch_norm_legit_no_training:
        return [x_lab, None, None]
    return x_lab


@rule("layer_norm", "native_layer_norm", "rms_norm")
def _layer_norm(w: _Walker, node: Node) -> Any:
    x_lab = w.labels(node.args[0])
    # Statistics over channels change when channels go, so normalized channels are kept.
    w.space.fix(x_lab.ids)
    for i in (2, 3):
        arg = _arg(node, i, "")
        if isinstance(arg, Node):
            for ids in w.weight_dims(arg, "norm"):
                w.space.fix(ids)
    out = Labels(
        x_lab.ids,
        w.shape(node) if node.target.overloadpacket is not aten.native_layer_norm else x_lab.shape,
    )
    return [out, None, None] if node.target.overloadpacket is aten.native_layer_norm else out


@rule("group_norm")
def _group_norm(w: _Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    w.space.fix(x_lab.ids)  # group statistics span channels: kept, like layer norm
    for i in (2, 3):
        arg = _arg(node, i, "")
        if isinstance(arg, Node):
            w.space.fix(w.weight_dims(arg, "norm")[0])
    return Labels(x_lab.ids, w.shape(node))


@rule("embedding")
def _embedding(w: _Walker, node: Node) -> Labels:
    weight, indices = node.args[0], node.args[1]
    _, dim_ids = w.weight_dims(weight, "weight")
    idx = w.labels(indices)
    if idx is not None:
        w.space.fix(idx.ids)
    w.use("embedding", weight=weight)
    out_shape = w.shape(node)
    return Labels(dim_ids.reshape((1,) * (len(out_shape) - 1) + (-1,)), out_shape)


@rule(
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "max_pool2d_with_indices",
    "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "upsample_bicubic2d",
    "constant_pad_nd", "pad", "reflection_pad2d", "replicate_pad2d", "roll",
    "pixel_shuffle", "pixel_unshuffle", "max_pool2d_with_indices",
)  # fmt: skip
def _spatial(w: _Walker, node: Node) -> Any:
    """Operations that act on dimensions other than the channel one (checked, not assumed)."""
    x_lab = w.labels(node.args[0])
    out_val = node.meta["val"]
    out_shape = tuple(out_val[0].shape if isinstance(out_val, list | tuple) else out_val.shape)
    packet = node.target.overloadpacket
    if packet is aten.roll:
        moved = [_norm_dim(d, len(x_lab.shape)) for d in _as_list(_arg(node, 2, "dims", []))]
    else:
        moved = [d for d in range(len(out_shape)) if out_shape[d] != x_lab.shape[d]]
        if packet in (aten.pixel_shuffle, aten.pixel_unshuffle):
            moved = list(range(1, len(out_shape)))
        elif packet in (aten.constant_pad_nd, aten.pad):
            pads = list(node.args[1])
            moved = [len(out_shape) - 1 - i // 2 for i in range(len(pads)) if pads[i] != 0]
    for d in moved:
        if x_lab.ids.shape[d] > 1:
            raise UnsupportedOperationError(
                f"{_op_name(node)} changes dimension {d}, which carries channels "
                f"(in module {w.module_path(node)!r}); ignore that module to keep its channels."
            )
    out = Labels(x_lab.ids, out_shape)
    return [out, untracked(out_shape)] if isinstance(out_val, list | tuple) else out


@rule("mean", "sum", "amax", "amin", "var", "std", "logsumexp", "max",
      "min", "argmax", "argmin", "norm", "linalg_vector_norm", "var_mean", "prod", "any", "all")  # fmt: skip
def _reduce(w: _Walker, node: Node) -> Any:
    x_lab = w.labels(node.args[0])
    ndim = len(x_lab.shape)
    dims_arg = _arg(node, 1, "dim", None)
    if dims_arg is None or (isinstance(dims_arg, list | tuple) and len(dims_arg) == 0):
        dims = list(range(ndim))
    else:
        dims = [_norm_dim(int(d), ndim) for d in _as_list(dims_arg)]
    packet = node.target.overloadpacket
    keepdim = (
        bool(_arg(node, 2, "keepdim", False))
        if packet not in (aten.var, aten.std, aten.var_mean)
        else bool(node.kwargs.get("keepdim", False))
    )
    reduced_tracked = [d for d in dims if x_lab.ids.shape[d] > 1]
    if reduced_tracked and packet is not aten.sum:
        # A mean, max or norm over channels changes when a channel goes: keep those channels.
        w.space.fix(x_lab.ids)
    index = [slice(0, 1) if d in dims else slice(None) for d in range(ndim)]
    ids = x_lab.ids[tuple(index)]
    if reduced_tracked:
        # The result no longer has those channels (a sum of fewer channels is still exact).
        ids = np.where(ids >= 0, UNTRACKED, ids) if packet is aten.sum else ids
    if not keepdim:
        ids = ids.reshape([n for d, n in enumerate(ids.shape) if d not in dims])
    out_val = node.meta["val"]
    if isinstance(out_val, list | tuple):
        return [Labels(ids, tuple(v.shape)) for v in out_val]
    return Labels(ids, tuple(out_val.shape))


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


@rule("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum")
def _softmax(w: _Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    dim = _norm_dim(int(node.args[1]), len(x_lab.shape))
    if x_lab.ids.shape[dim] > 1:
        w.space.fix(x_lab.ids)  # normalizing over channels: removing one changes the others
    return Labels(x_lab.ids, w.shape(node))


@rule("flatten", "view", "reshape", "_unsafe_view", "unflatten", "squeeze",
      "unsqueeze", "view_as", "reshape_as", "expand", "expand_as", "broadcast_to",
      "repeat")  # fmt: skip
def _reshape(w: _Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    out_shape = w.shape(node)
    packet = node.target.overloadpacket
    if packet in (aten.expand, aten.expand_as, aten.broadcast_to):
        lead = len(out_shape) - len(x_lab.shape)
        return Labels(x_lab.ids.reshape((1,) * lead + x_lab.ids.shape), out_shape)
    if packet is aten.repeat:
        reps = list(node.args[1])
        lead = len(reps) - len(x_lab.shape)
        ids = x_lab.ids.reshape((1,) * lead + x_lab.ids.shape)
        for d, r in enumerate(reps):
            if r > 1 and ids.shape[d] > 1:
                ids = np.concatenate([ids] * r, axis=d)
        return Labels(ids, out_shape)
    return _general_reshape(w, x_lab, out_shape)


def _general_reshape(w: _Walker, x_lab: Labels, out_shape: tuple[int, ...]) -> Labels:
    """Map groups of input dims to groups of output dims with equal products, then reshape ids."""
    in_shape = x_lab.shape
    groups = _reshape_groups(in_shape, out_shape)
    out_ids_shape: list[int] = []
    pieces: list[tuple[list[int], list[int]]] = []
    for in_dims, out_dims in groups:
        tracked = [d for d in in_dims if x_lab.ids.shape[d] > 1]
        pieces.append((in_dims, out_dims))
        if tracked:
            out_ids_shape += [out_shape[d] for d in out_dims]
        else:
            out_ids_shape += [1] * len(out_dims)
    # Materialize the tracked groups, then reshape literally: flat positions keep their element.
    full_dims = [
        d for in_dims, _ in pieces if any(x_lab.ids.shape[i] > 1 for i in in_dims) for d in in_dims
    ]
    ids = np.ascontiguousarray(x_lab.materialize(full_dims))
    ids = ids.reshape(out_ids_shape)
    for in_dims, out_dims in pieces:
        tracked = [d for d in in_dims if x_lab.ids.shape[d] > 1]
        big_out = [d for d in out_dims if out_shape[d] > 1]
        if (
            len(tracked) == 1
            and len(big_out) > 1
            and len([d for d in in_dims if in_shape[d] > 1]) == 1
        ):
            _record_split(w, ids, big_out)
    return Labels(ids, out_shape)


def _record_split(w: _Walker, ids: np.ndarray, dims: list[int]) -> None:
    index = [0] * ids.ndim
    for d in dims:
        index[d] = slice(None)
    block = ids[tuple(index)]
    outer = block.shape[0]
    w.splits.append(Split(block.reshape(outer, -1)))


def _reshape_groups(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """Pair consecutive input and output dims whose sizes multiply to the same number."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        gi, gj = [], []
        pi = pj = 1
        while True:
            if pi <= pj and i < len(in_shape):
                gi.append(i)
                pi *= in_shape[i]
                i += 1
            elif j < len(out_shape):
                gj.append(j)
                pj *= out_shape[j]
                j += 1
            else:
                break
            if pi == pj and (i == len(in_shape) or in_shape[i] != 1 or True) and gi and gj:
                # absorb trailing size-1 dims on both sides into this group
                while (
                    i < len(in_shape)
                    and in_shape[i] == 1
                    and (j >= len(out_shape) or out_shape[j] != 1)
                ):
                    gi.append(i)
                    i += 1
                while (
                    j < len(out_shape)
                    and out_shape[j] == 1
                    and (i >= len(in_shape) or in_shape[i] != 1)
                ):
                    gj.append(j)
                    j += 1
                break
            if i == len(in_shape) and j == len(out_shape):
                break
        groups.append((gi, gj))
    return groups


@rule("permute", "transpose", "t", "movedim", "swapaxes", "numpy_T", "mT")
def _permute(w: _Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    ndim = len(x_lab.shape)
    packet = node.target.overloadpacket
    if packet is aten.permute:
        order = [_norm_dim(int(d), ndim) for d in node.args[1]]
    elif packet in (aten.transpose, aten.swapaxes):
        a, b = _norm_dim(int(node.args[1]), ndim), _norm_dim(int(node.args[2]), ndim)
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
    elif packet is aten.movedim:
        order = list(np.moveaxis(np.arange(ndim), node.args[1], node.args[2]))
        order = [int(np.where(np.array(order) == k)[0][0]) for k in range(ndim)]
        order = list(np.argsort(order))
    else:
        order = (
            list(range(ndim))[::-1]
            if packet is not aten.mT
            else list(range(ndim - 2)) + [ndim - 1, ndim - 2]
        )
    return Labels(np.transpose(x_lab.ids, order), w.shape(node))


@rule("cat", "concat", "stack")
def _cat(w: _Walker, node: Node) -> Labels:
    parts = [w.labels(t) for t in node.args[0]]
    out_shape = w.shape(node)
    dim = _norm_dim(int(_arg(node, 1, "dim", 0)), len(out_shape))
    if node.target.overloadpacket is aten.stack:
        parts = [
            Labels(np.expand_dims(p.ids, dim), p.shape[:dim] + (1,) + p.shape[dim:]) for p in parts
        ]
    if all(p.ids.shape[dim] == 1 for p in parts):
        # Along an untracked dim (tokens, positions): the parts' channels meet position by position.
        return _broadcast_union(w, node, parts)
    if any(n > 1 for p in parts for d, n in enumerate(p.ids.shape) if d != dim):
        # Channels along two dims at once: too entangled to slice safely.
        for p in parts:
            w.space.fix(p.ids)
        return untracked(out_shape, FIXED)
    ids = np.concatenate([p.materialize([dim]) for p in parts], axis=dim)
    return Labels(ids, out_shape)


@rule("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split")
def _split(w: _Walker, node: Node) -> list[Labels]:
    x_lab = w.labels(node.args[0])
    vals = node.meta["val"]
    packet = node.target.overloadpacket
    dim = _norm_dim(
        int(_arg(node, 2 if packet not in (aten.unbind,) else 1, "dim", 0)), len(x_lab.shape)
    )
    if x_lab.ids.shape[dim] > 1:
        # The cut points are positions: removing a channel would move them, so keep the channels.
        w.space.fix(x_lab.ids)
    outs, start = [], 0
    for v in vals:
        shape = tuple(v.shape)
        size = 1 if packet is aten.unbind else shape[dim]
        if x_lab.ids.shape[dim] > 1:
            ids = np.take(x_lab.ids, range(start, start + size), axis=dim)
        else:
            ids = x_lab.ids
        if packet is aten.unbind:
            ids = ids.reshape(ids.shape[:dim] + ids.shape[dim + 1 :])
        outs.append(Labels(ids, shape))
        start += size
    return outs


@rule("slice", "narrow", "select", "index_select")
def _slice(w: _Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    ndim = len(x_lab.shape)
    packet = node.target.overloadpacket
    dim = _norm_dim(int(_arg(node, 1, "dim", 0)), ndim)
    out_shape = w.shape(node)
    if x_lab.ids.shape[dim] == 1:
        ids = x_lab.ids if packet is not aten.select else np.take(x_lab.ids, 0, axis=dim)
        return Labels(ids, out_shape)
    size = x_lab.shape[dim]
    if packet is aten.select:
        return Labels(np.take(x_lab.ids, int(node.args[2]) % size, axis=dim), out_shape)
    if packet is aten.index_select:
        raise UnsupportedOperationError(
            f"index_select along a channel dimension (module {w.module_path(node)!r}); ignore that module."
        )
    if packet is aten.narrow:
        start, length = int(node.args[2]), int(node.args[3])
        positions = range(start % size, start % size + length)
    else:
        start = _arg(node, 2, "start", 0)
        end = _arg(node, 3, "end", None)
        step = _arg(node, 4, "step", 1)
        positions = range(size)[slice(start, end, step)]
    # Slicing channels by position: after pruning the positions would shift, so keep them all.
    w.space.fix(x_lab.ids)
    return Labels(np.take(x_lab.ids, list(positions), axis=dim), out_shape)


@rule("index", "gather")
def _index(w: _Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    out_shape = w.shape(node)
    packet = node.target.overloadpacket
    if packet is aten.index:
        indices = list(node.args[1])
        indexed = [d for d, ix in enumerate(indices) if ix is not None]
        for ix in indices:
            lab = w.labels(ix)
            if lab is not None:
                w.space.fix(lab.ids)
        if any(x_lab.ids.shape[d] > 1 for d in indexed):
            w.space.fix(x_lab.ids)
        rest = [d for d in range(len(x_lab.shape)) if d not in indexed]
        # Advanced indexing on leading dims (the common case): indexed dims -> index shape.
        if indexed == list(range(len(indexed))):
            lead = len(out_shape) - len(rest)
            ids = x_lab.ids[(0,) * len(indexed)].reshape(
                (1,) * lead + tuple(x_lab.ids.shape[d] for d in rest)
            )
            return Labels(ids, out_shape)
        w.space.fix(x_lab.ids)
        return untracked(out_shape, FIXED)
    w.space.fix(x_lab.ids)
    return untracked(out_shape, FIXED)


@rule("matmul", "bmm", "mm", "baddbmm", "addmm")
def _matmul(w: _Walker, node: Node) -> Labels:
    packet = node.target.overloadpacket
    a_arg, b_arg = (
        (node.args[1], node.args[2]) if packet in (aten.baddbmm, aten.addmm) else node.args[:2]
    )
    a, b = w.labels(a_arg), w.labels(b_arg)
    out_shape = w.shape(node)
    if packet is aten.addmm and w.param_fqn(b_arg) is not None:
        raise UnsupportedOperationError("addmm with a parameter weight; ignore its module.")
    a_ids, b_ids = a.ids, b.ids
    if a_ids.ndim == 1:
        a_ids = a_ids[None, :]
    if b_ids.ndim == 1:
        b_ids = b_ids[:, None]
    # Contraction: element k of A's last dim meets element k of B's second-to-last dim.
    a_k = np.moveaxis(
        a.materialize([len(a.shape) - 1])[..., :1, :] if a_ids.ndim > 1 else a_ids, -1, -1
    )
    b_k = np.swapaxes(b.materialize([len(b.shape) - 2]) if b_ids.ndim > 1 else b_ids, -1, -2)[
        ..., :1, :
    ]
    w.space.couple(a_k, b_k)
    # Attention: q.kT contracts head_dim; attn.v keeps v's head_dim as its columns.
    _mark_heads(w, a, len(a.shape) - 1)
    _mark_heads(w, b, len(b.shape) - 2)
    _mark_heads(w, b, len(b.shape) - 1)
    # Batch dims meet batch dims; rows come from A, columns from B.
    batch_a, batch_b = a_ids[..., :, :1][..., :1, :], b_ids[..., :1, :][..., :, :1]
    w.space.couple(*np.broadcast_arrays(batch_a, batch_b)) if batch_a.ndim == batch_b.ndim else None
    rows = a_ids[..., :, :1]
    cols = b_ids[..., :1, :]
    rows_b, cols_b = np.broadcast_arrays(rows, cols)
    ids = np.where(rows_b >= 0, rows_b, cols_b)
    ids = np.where((np.asarray(rows.shape[-2:]) == 1).all() & (cols_b >= 0), cols_b, ids)
    ids = (
        ids.reshape(ids.shape[-len(out_shape) :])
        if ids.ndim >= len(out_shape)
        else ids.reshape((1,) * (len(out_shape) - ids.ndim) + ids.shape)
    )
    return Labels(ids, out_shape)


def _mark_heads(w: _Walker, lab: Labels, dim: int) -> None:
    """A split whose inner factor is contracted in attention is a heads x head_dim split."""
    axis = _axis(lab.ids, dim)
    if len(axis) < 2:
        return
    wanted = set(axis.tolist())
    for split in w.splits:
        if (
            not split.is_heads
            and split.ids.shape[1] == len(axis)
            and set(split.ids[0].tolist()) == wanted
        ):
            split.is_heads = True
        elif not split.is_heads and split.ids.shape[1] == len(axis):
            rows = {tuple(sorted(r)) for r in split.ids.tolist()}
            if tuple(sorted(wanted)) in rows:
                split.is_heads = True


@rule("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
def _sdpa(w: _Walker, node: Node) -> Any:
    q, k, v = (w.labels(a) for a in node.args[:3])
    nd = len(q.shape)
    # q and k meet in the head_dim contraction; heads meet across q, k and v.
    w.space.couple(q.materialize([nd - 1])[..., :1, :], k.materialize([nd - 1])[..., :1, :])
    for lab in (q, k, v):
        _mark_heads(w, lab, nd - 1)
    heads_q = _axis(q.ids, nd - 3) if q.ids.shape[nd - 3] > 1 else None
    heads_v = _axis(v.ids, nd - 3) if v.ids.shape[nd - 3] > 1 else None
    if heads_q is not None and heads_v is not None:
        w.space.couple(heads_q, heads_v)
    mask = _arg(node, 3, "attn_mask")
    if isinstance(mask, Node):
        m = w.labels(mask)
        if m is not None:
            w.space.fix(m.ids)
    out_shape = tuple(
        node.meta["val"][0].shape
        if isinstance(node.meta["val"], list | tuple)
        else node.meta["val"].shape
    )
    out = Labels(v.ids, out_shape)
    if isinstance(node.meta["val"], list | tuple):
        return [out] + [
            untracked(tuple(x.shape)) if isinstance(x, torch.Tensor) else None
            for x in node.meta["val"][1:]
        ]
    return out


@rule("arange", "zeros", "ones", "full", "empty", "randn", "rand", "scalar_tensor",
      "tensor", "linspace", "eye", "new_zeros", "new_ones", "new_empty", "new_full",
      "empty_strided", "tril", "triu")  # fmt: skip
def _factory(w: _Walker, node: Node) -> Labels:
    packet = node.target.overloadpacket
    if packet in (aten.tril, aten.triu):
        lab = w.labels(node.args[0])
        return Labels(lab.ids, w.shape(node))
    return untracked(w.shape(node))


@rule("sym_size", "sym_numel", "sym_stride", "item", "_assert_tensor_metadata",
      "_assert_scalar", "sym_constrain_range_for_size", "_local_scalar_dense")  # fmt: skip
def _no_tensor(w: _Walker, node: Node) -> None:
    return None
