"""The dependency graph of coupled channels, and the physical removal of channels from a model."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from slimkit.errors import ConfigError, SlimkitError
from slimkit.graph._capture import CapturedGraph, capture
from slimkit.graph._labels import FIXED, ParamDim, ParamElements
from slimkit.graph._propagate import Propagation, propagate

__all__ = ["ChannelGroup", "DependencyGraph", "Slice", "Unit", "build_dependency_graph"]


@dataclass(frozen=True)
class Slice:
    """Indices of one dimension of one parameter or buffer."""

    fqn: str
    dim: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Unit:
    """The smallest thing that can be removed: every slice that must go with it."""

    slices: tuple[Slice, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Units of the same shape of coupling, such as the 64 output channels of one conv and the
    matching batch-norm entries and input channels of the next conv.

    Attributes:
        index: Position in :attr:`DependencyGraph.groups`.
        units: The removable units.
        kind: ``"heads"`` for attention heads, ``"channels"`` otherwise.
        modules: Module paths whose parameters the group touches.
    """

    index: int
    units: tuple[Unit, ...]
    kind: str
    modules: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.units)

    def params(self) -> set[tuple[str, int]]:
        return {(s.fqn, s.dim) for s in self.units[0].slices}


class DependencyGraph:
    """Coupled channels of a captured model.

    Build it with :func:`build_dependency_graph`; ``groups`` lists what can be removed, and
    :meth:`prune` returns a physically smaller copy of the model without the chosen units.
    """

    def __init__(self, model: nn.Module, captured: CapturedGraph, prop: Propagation) -> None:
        self.captured = captured
        self.propagation = prop
        self.groups = _groups(prop)
        self._module_of = _module_of_params(model)
        object.__setattr__  # keep mypy quiet about dynamic attributes below
        self.groups = tuple(
            ChannelGroup(
                g.index,
                g.units,
                g.kind,
                tuple(sorted({self._module_of.get(f, f) for f, _ in g.params()})),
            )
            for g in self.groups
        )

    @property
    def num_units(self) -> int:
        return sum(g.size for g in self.groups)

    def removal_plan(self, removals: dict[int, Sequence[int]]) -> dict[tuple[str, int], list[int]]:
        """Indices to remove per (parameter, dim) for ``removals`` (group index -> unit positions)."""
        plan: dict[tuple[str, int], set[int]] = defaultdict(set)
        for gi, positions in removals.items():
            group = self.groups[gi]
            if len(set(positions)) >= group.size:
                raise ConfigError(
                    f"cannot remove all {group.size} units of group {gi} ({', '.join(group.modules)}): "
                    "at least one must stay."
                )
            for pos in positions:
                for s in group.units[pos].slices:
                    plan[(s.fqn, s.dim)].update(s.indices)
        return {k: sorted(v) for k, v in plan.items()}

    def prune(self, model: nn.Module, removals: dict[int, Sequence[int]]) -> nn.Module:
        """A copy of ``model`` with the given units physically removed."""
        plan = self.removal_plan(removals)
        pruned = copy.deepcopy(model)
        _apply_plan(pruned, plan)
        _resync_modules(pruned, model)
        return pruned

    def zero(self, model: nn.Module, removals: dict[int, Sequence[int]]) -> nn.Module:
        """A copy of ``model`` with the given units set to zero instead of removed (for checks)."""
        plan = self.removal_plan(removals)
        zeroed = copy.deepcopy(model)
        tensors = dict(zeroed.named_parameters()) | dict(zeroed.named_buffers())
        with torch.no_grad():
            for (fqn, dim), indices in plan.items():
                tensors[fqn].index_fill_(dim, torch.tensor(indices), 0.0)
        return zeroed


def build_dependency_graph(
    model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...], *, ignore: Iterable[str] = ()
) -> DependencyGraph:
    """Capture ``model`` and group its channels into removable units.

    Args:
        model: The model; it is not modified.
        example_inputs: Inputs of the right shape (one sample is enough).
        ignore: Module paths whose channels must be kept (and whose unknown operations are
            then accepted).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> graph = build_dependency_graph(net, torch.randn(1, 3, 16, 16))
        >>> [(g.size, g.modules) for g in graph.groups]
        [(8, ('0', '1', '3'))]
        >>> graph.prune(net, {0: [0, 1, 2]})[0].out_channels
        5
    """
    ignore = tuple(ignore)
    known = {name for name, _ in model.named_modules()}
    unknown = [m for m in ignore if m not in known]
    if unknown:
        raise ConfigError(
            f"ignore names modules that do not exist: {unknown}; e.g. {sorted(known)[1:6]}"
        )
    captured = capture(model, example_inputs)
    return DependencyGraph(model, captured, propagate(captured, ignore))


def _module_of_params(model: nn.Module) -> dict[str, str]:
    out = {}
    for mname, module in model.named_modules():
        for pname, _ in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            out[f"{mname}.{pname}" if mname else pname] = mname
    return out


def _groups(prop: Propagation) -> list[ChannelGroup]:
    space = prop.space
    roots = space.components()
    fixed_root = roots[FIXED]
    units: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for start, stop, owner in space.owners:
        r = roots[start:stop]
        live = np.nonzero(r != fixed_root)[0]
        for offset in live.tolist():
            for fqn, dim, index in _slices_of(owner, offset):
                units[int(r[offset])].append((fqn, dim, index))
    heads = {int(roots[s.ids[0, 0]]) for s in prop.splits if s.is_heads}
    by_signature: dict[tuple, list[Unit]] = defaultdict(list)
    kinds: dict[tuple, str] = {}
    for root, members in units.items():
        per_param: dict[tuple[str, int], list[int]] = defaultdict(list)
        for fqn, dim, index in members:
            per_param[(fqn, dim)].append(index)
        signature = tuple(sorted((k, len(v)) for k, v in per_param.items()))
        unit = Unit(
            tuple(Slice(f, d, tuple(sorted(ix))) for (f, d), ix in sorted(per_param.items()))
        )
        by_signature[signature].append(unit)
        kinds[signature] = "heads" if root in heads else kinds.get(signature, "channels")
    groups = []
    for i, (signature, members) in enumerate(by_signature.items()):
        members.sort(key=lambda u: u.slices[0].indices)
        groups.append(ChannelGroup(i, tuple(members), kinds[signature], ()))
    return groups


def _slices_of(owner: ParamDim | ParamElements, offset: int) -> list[tuple[str, int, int]]:
    if isinstance(owner, ParamDim):
        return [(owner.fqn, owner.dim, offset)]
    # An entry of a parameter used directly: its position along every dim of size > 1.
    kept = tuple(n if n > 1 else 1 for n in owner.shape)
    position = np.unravel_index(offset, kept)
    return [(owner.fqn, d, int(position[d])) for d in range(len(kept)) if kept[d] > 1]


def _apply_plan(model: nn.Module, plan: dict[tuple[str, int], list[int]]) -> None:
    by_tensor: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for (fqn, dim), indices in plan.items():
        by_tensor[fqn][dim] = indices
    for fqn, dims in by_tensor.items():
        module_name, _, attr = fqn.rpartition(".")
        module = model.get_submodule(module_name)
        tensor = getattr(module, attr)
        new = tensor.detach()
        for dim, removed in dims.items():
            keep = torch.tensor(sorted(set(range(new.shape[dim])) - set(removed)), dtype=torch.long)
            new = new.index_select(dim, keep)
        if isinstance(tensor, nn.Parameter):
            setattr(
                module, attr, nn.Parameter(new.contiguous(), requires_grad=tensor.requires_grad)
            )
        else:
            module._buffers[attr] = new.contiguous()


def _resync_modules(pruned: nn.Module, original: nn.Module) -> None:
    """Update size attributes (in/out channels, features, groups) to the new tensor shapes."""
    originals = dict(original.named_modules())
    for name, module in pruned.named_modules():
        before = originals[name]
        if isinstance(module, nn.modules.conv._ConvNd):
            _resync_conv(module, before)
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            if module.weight is not None:
                module.num_features = module.weight.shape[0]
            elif module.running_mean is not None:
                module.num_features = module.running_mean.shape[0]
        elif isinstance(module, nn.Embedding):
            module.num_embeddings, module.embedding_dim = module.weight.shape
        elif isinstance(module, nn.PReLU):
            module.num_parameters = module.weight.numel()


def _resync_conv(conv: nn.modules.conv._ConvNd, before: nn.modules.conv._ConvNd) -> None:
    w = conv.weight
    if before.groups > 1 and before.in_channels == before.groups:
        # Depthwise: whole groups were removed, one input channel each.
        per_out = before.out_channels // before.groups
        conv.groups = (
            (w.shape[1] if conv.transposed else w.shape[0]) // per_out
            if not conv.transposed
            else w.shape[0]
        )
    if conv.transposed:
        conv.in_channels = w.shape[0]
        conv.out_channels = w.shape[1] * conv.groups
    else:
        conv.out_channels = w.shape[0]
        conv.in_channels = w.shape[1] * conv.groups
    if conv.in_channels % conv.groups or conv.out_channels % conv.groups:
        raise SlimkitError(
            f"pruning left a conv with {conv.in_channels} channels in {conv.groups} groups"
        )
