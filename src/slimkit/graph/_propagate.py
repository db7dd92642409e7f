"""Walk a captured graph once, giving every tensor channel labels and recording couplings.

One rule per ATen operation family (in ``_rules``, ``_attention`` and ``_recurrent``). An
operation without a rule is an error that names it and its module, unless that module is
ignored: then every channel it touches is fixed. Nothing is ever silently assumed to keep
channels.
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
    """A tracked dimension reshaped into ``[lead, outer, inner]`` (e.g. 3 x heads x head_dim).

    Which elements must go together depends on how the factors are used later, so the decision
    waits for the end of the walk. A split whose ``outer`` factor is batched in attention loses
    whole heads (one ``outer`` index in every ``lead`` block); any other split loses the same
    ``inner`` position in every block, so a channel shuffle stays a valid shuffle. ``lead`` never
    shrinks. Both choices need the model's code to recompute the reshape from the tensor's size
    or from attributes that pruning updates: :func:`build_dependency_graph` checks that on a
    pruned copy and keeps the channels where it does not hold.
    """

    ids: np.ndarray  # [lead, outer, inner]
    module: str
    is_heads: bool = False
    outer_by_position: bool = False  # an outer index is selected: heads may not go


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


Rule = Callable[["Walker", Node], Any]
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
    """Run the rules over ``captured``; modules at or below an ``ignore`` path are fixed."""
    walker = Walker(captured, tuple(ignore))
    walker.run()
    return walker.result()


class Walker:
    """State of one walk: labels of every node and the id space they live in."""

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
        self._user_inputs = set(captured.user_inputs)

    # ----- walking -----
    def run(self) -> None:
        for node in self.captured.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                self.env[node] = self._placeholder(node)
            elif node.op == "get_attr":
                self.env[node] = self._constant(node)
            elif node.op == "call_function":
                out = self._call(node)
                if _mutates_first_arg(node) and isinstance(out, Labels):
                    self._mutated(node.args[0], out)
                self.env[node] = out
            elif node.op == "output":
                for out in _flatten(node.args[0]):
                    if isinstance(out, Node) and isinstance(self.env.get(out), Labels):
                        self.space.fix(self.env[out].ids)

    def result(self) -> Propagation:
        for split in self.splits:
            if split.is_heads and split.outer_by_position:
                self.space.fix(split.ids)
            elif split.is_heads:
                self.space.couple(split.ids, split.ids[:1, :, :1])  # a head goes whole
            else:
                self.space.couple(split.ids, split.ids[:1, :1, :])  # one position of every block
        return Propagation(self.space, self.splits, self.param_dims, self.module_uses, self.notes)

    def _call(self, node: Node) -> Any:
        if node.target is operator.getitem:
            container = self.env.get(node.args[0])
            return container[node.args[1]] if isinstance(container, list | tuple) else None
        module = self.module_path(node)
        packet = getattr(node.target, "overloadpacket", node.target)
        handler = _RULES.get(packet)
        if module is not None and self.is_ignored(module):
            return self.opaque(node)
        if handler is None:
            if not _produces_tensor(node):
                return None
            way_out = (
                f"Pass ignore=[{module!r}] (or a module above it) to keep the channels it touches."
                if module
                else "It runs in the top-level forward(); move it into a submodule and ignore that."
            )
            raise UnsupportedOperationError(
                f"the dependency graph does not know the operation {_op_name(node)} "
                f"(in module {module or '<top level>'!r}), so it cannot tell which channels it "
                f"couples. {way_out}"
            )
        return handler(self, node)

    def _mutated(self, target: Any, out: Labels) -> None:
        """An in-place operation changed ``target``: later uses must see the new labels.

        Uses of a view's base cannot be relabelled, so channels written into a view where it
        had none are fixed.
        """
        if not isinstance(target, Node):
            return
        fqn = self.param_fqn(target)
        if fqn is not None:
            self.space.fix(out.ids)
            self._fix_param(fqn)
            return
        before = self.env.get(target)
        if isinstance(before, Labels) and before.ids.ndim == out.ids.ndim and _is_alias(target):
            shape = np.broadcast_shapes(before.ids.shape, out.ids.shape)
            new = np.broadcast_to(out.ids, shape)
            inflow = (new >= 0) & (np.broadcast_to(before.ids, shape) == UNTRACKED)
            if inflow.any():
                self.space.fix(new[inflow])
        self.env[target] = out

    def opaque(self, node: Node) -> Any:
        """An ignored operation: fix every channel that enters it and every one it creates."""
        for arg in _flatten((node.args, node.kwargs)):
            lab = self.env.get(arg) if isinstance(arg, Node) else None
            if isinstance(lab, Labels):
                self.space.fix(lab.ids)
            elif isinstance(arg, Node) and self.param_fqn(arg) is not None:
                self._fix_param(self.param_fqn(arg))
        return self.fresh_output(node, FIXED)

    def fresh_output(self, node: Node, value: int) -> Any:
        """Labels for the output(s) of ``node`` with every entry set to ``value``."""
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
        if self.param_fqn(arg) is not None:
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

    def weight_dims(self, arg: Any, dims: int = 2) -> list[np.ndarray]:
        """Ids of the first ``dims`` dimensions of a parameter; a computed weight is fixed instead.

        Later dimensions (kernel taps) are never channels and get no ids.
        """
        fqn = self.param_fqn(arg)
        shape = self.shape(arg)[:dims]
        if fqn is None or fqn in self.param_elems:
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

    def meet(self, operands: list[np.ndarray], shapes: list[Sequence[int]]) -> np.ndarray:
        """Operands of one rank meeting position by position; returns the result's ids.

        Ids at the same (broadcast) position are coupled. A fixed operand broadcast along every
        dimension where the others carry channels (an attention mask over heads) constrains
        nothing. An operand that cannot be sliced (a constant, untracked) but spans a dimension
        that carries channels fixes those channels. A dimension along which some fully tracked
        operand is constant ends up in one component per position, so it is collapsed to size
        1 (keeps labels small).
        """
        shape = np.broadcast_shapes(*(a.shape for a in operands))
        varying = [{d for d, n in enumerate(a.shape) if n > 1} for a in operands]
        passive = [
            bool((a == FIXED).all())
            and not any(real[d] > 1 for j, v in enumerate(varying) if j != i for d in v)
            for i, (a, real) in enumerate(zip(operands, shapes, strict=True))
        ]
        active = [a for a, p in zip(operands, passive, strict=True) if not p] or operands[:1]
        result = active[0]
        for other in active[1:]:
            self.space.couple(result, other)
            result = np.where(result >= 0, result, other)
        for a, p in zip(operands, passive, strict=True):
            if p:
                result = np.where(result >= 0, result, a)
        result = np.broadcast_to(result, shape)
        tracked = [d for d, n in enumerate(shape) if n > 1]
        full = [bool((a >= 0).all()) and not p for a, p in zip(operands, passive, strict=True)]
        for a, real, is_full, p in zip(operands, shapes, full, passive, strict=True):
            if not is_full and not p and any(real[d] > 1 for d in tracked):
                hole = (np.broadcast_to(a, shape) == UNTRACKED) & (result >= 0)
                if hole.any():
                    self.space.fix(result[hole])
        for d in tracked:
            if any(f and a.shape[d] == 1 for a, f in zip(operands, full, strict=True)):
                result = result[(slice(None),) * d + (slice(0, 1),)]
        return result

    def _placeholder(self, node: Node) -> Any:
        if self.param_fqn(node) is not None:
            return None  # parameters get labels when an operation uses them
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            # The model's inputs keep their channels; lifted constants have none.
            return untracked(tuple(val.shape), FIXED if node.name in self._user_inputs else -1)
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
                    f"parameter {fqn!r} is used both as a layer weight and directly in "
                    "arithmetic; ignore its module to keep it unpruned."
                )
            shape = self.shape(node)
            kept = tuple(n if n > 1 else 1 for n in shape)
            if math.prod(kept) == 1:
                # A single number (a temperature, a ReZero gate) can never be sliced: fixed.
                ids = np.full(kept, FIXED, dtype=np.int64)
            else:
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


# ---------------------------------------------------------------------------- shared helpers


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


def _mutates_first_arg(node: Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    info = schema.arguments[0].alias_info
    return info is not None and info.is_write


def _is_alias(node: Node) -> bool:
    """Whether ``node`` is a view of another tensor (writes to it change that tensor too)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return isinstance(node.args[0], Node) and _is_alias(node.args[0])
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` of ``node``, or keyword ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def axis(ids: np.ndarray, dim: int) -> np.ndarray:
    """The labels along ``dim`` (taking index 0 of every other dim)."""
    index = [0] * ids.ndim
    index[dim] = slice(None)
    return ids[tuple(index)]


def aligned(lab: Labels, ndim: int) -> np.ndarray:
    """``lab``'s ids with leading size-1 dims up to ``ndim`` (numpy broadcasting order)."""
    return lab.ids.reshape((1,) * (ndim - lab.ids.ndim) + lab.ids.shape)


def broadcast_union(w: Walker, node: Node, operands: list[Labels | None]) -> Labels:
    """Elementwise operation: operands' channels are coupled where they meet."""
    out_shape = w.shape(node)
    ndim = len(out_shape)
    present = [op for op in operands if op is not None]
    if not present:
        return untracked(out_shape)
    ids = w.meet(
        [aligned(op, ndim) for op in present],
        [(1,) * (ndim - len(op.shape)) + tuple(op.shape) for op in present],
    )
    return Labels(ids, out_shape)
