"""The dependency graph of coupled channels, and the physical removal of channels from a model."""

from __future__ import annotations

import copy
import gc
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree

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


@dataclass(frozen=True)
class _HeadSplit:
    """Where a module cut a tensor into heads, and which unit each head is."""

    module: str
    heads: int
    head_dim: int
    units: tuple[tuple[int, int] | None, ...]  # (group, position) per head; None: kept


class DependencyGraph:
    """Coupled channels of a captured model.

    Build it with :func:`build_dependency_graph`; ``groups`` lists what can be removed, and
    :meth:`prune` returns a physically smaller copy of the model without the chosen units.
    ``notes`` says what was kept and why (ignored modules, code that cannot lose heads).
    """

    def __init__(self, model: nn.Module, captured: CapturedGraph, prop: Propagation) -> None:
        self.captured = captured
        self.propagation = prop
        self.notes = list(prop.notes)
        module_of = _module_of_params(model)
        with _gc_paused():  # hundreds of thousands of small objects; collections only cost time
            groups, self._root_unit, self._roots = _groups(prop)
        self.groups = tuple(
            replace(g, modules=tuple(sorted({module_of.get(f, f) for f, _ in g.params()})))
            for g in groups
        )
        self._head_splits = self._find_head_splits()

    @property
    def num_units(self) -> int:
        return sum(g.size for g in self.groups)

    def removal_plan(self, removals: dict[int, Sequence[int]]) -> dict[tuple[str, int], list[int]]:
        """Indices to remove per (parameter, dim) for ``removals`` (group -> unit positions)."""
        plan: dict[tuple[str, int], set[int]] = defaultdict(set)
        for gi, positions in removals.items():
            group = self.groups[gi]
            if len(set(positions)) >= group.size:
                raise ConfigError(
                    f"cannot remove all {group.size} units of group {gi} "
                    f"({', '.join(group.modules)}): at least one must stay."
                )
            for pos in positions:
                for s in group.units[pos].slices:
                    plan[(s.fqn, s.dim)].update(s.indices)
        return {k: sorted(v) for k, v in plan.items()}

    def prune(self, model: nn.Module, removals: dict[int, Sequence[int]]) -> nn.Module:
        """A copy of ``model`` with the given units physically removed.

        Size attributes follow the new shapes: channels and features of convolutions, linear
        layers and norms, ``hidden_size``/``input_size`` of recurrent layers, and head counts
        (attributes such as ``num_heads`` or ``all_head_size``) of modules that lost heads.
        """
        return self._copy(model, removals, "prune", share=False)

    def zero(self, model: nn.Module, removals: dict[int, Sequence[int]]) -> nn.Module:
        """A copy of ``model`` with the given units set to zero instead of removed (for checks)."""
        return self._copy(model, removals, "zero", share=False)

    def _copy(
        self, model: nn.Module, removals: dict[int, Sequence[int]], how: str, share: bool
    ) -> nn.Module:
        """Pruned or zeroed copy; the changed tensors are made first and handed to deepcopy.

        With ``share``, unchanged tensors are shared with ``model`` (for a throwaway copy).
        """
        plan = self.removal_plan(removals)
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors |= dict(model.named_buffers(remove_duplicate=False))
        by_tensor: dict[str, dict[int, list[int]]] = defaultdict(dict)
        for (fqn, dim), indices in plan.items():
            by_tensor[fqn][dim] = indices
        memo: dict[int, object] = {id(t): t for t in tensors.values()} if share else {}
        for fqn, dims in by_tensor.items():
            memo[id(tensors[fqn])] = (_sliced if how == "prune" else _zeroed)(tensors[fqn], dims)
        new = copy.deepcopy(model, memo)
        if how == "prune":
            _resync_modules(new, model)
            self._resync_heads(new, removals)
        return new

    # ----- heads -----
    def _find_head_splits(self) -> list[_HeadSplit]:
        out = []
        for split in self.propagation.splits:
            if not split.is_heads or split.outer_by_position:
                continue
            _, heads, head_dim = split.ids.shape
            units = tuple(self._root_unit.get(int(self._roots[i])) for i in split.ids[0, :, 0])
            out.append(_HeadSplit(split.module, heads, head_dim, units))
        return out

    def _resync_heads(self, pruned: nn.Module, removals: dict[int, Sequence[int]]) -> None:
        removed = {(gi, pos) for gi, positions in removals.items() for pos in positions}
        done: set[str] = set()
        for split in self._head_splits:
            gone = sum(1 for unit in split.units if unit in removed)
            if not gone or split.module in done:
                continue
            done.add(split.module)
            module = pruned.get_submodule(split.module)
            _update_head_attributes(module, split.heads, split.heads - gone, split.head_dim)

    # ----- checking splits on a pruned copy -----
    def _check_splits(self, model: nn.Module, args: tuple[Tensor, ...]) -> None:
        """Keep the groups whose reshapes the model's code does not recompute after pruning.

        A split is valid only if the code reshapes with the tensor's size (``-1``, ``C // g``) or
        with attributes that :meth:`prune` updates; a hard-coded size breaks. One unit of every
        group touching a split is removed on a copy (one try per kind of module that splits),
        and the copy must run and equal the zeroed model.
        """
        batches: dict[str, set[int]] = defaultdict(set)
        kind_of = {name: type(m).__name__ for name, m in model.named_modules()}
        for split in self.propagation.splits:
            batches[kind_of.get(split.module, split.module)] |= self._groups_of(split.ids)
        drop: set[int] = set()
        for kind, groups in batches.items():
            removals = {
                gi: [self.groups[gi].size // 2] for gi in groups if self.groups[gi].size > 1
            }
            if not removals:
                continue
            failure = _try_removal(self, model, args, removals)
            if failure is not None:
                drop |= groups
                self.notes.append(
                    f"kept the channels that {kind} reshapes ({len(groups)} groups): its code does "
                    f"not follow smaller tensors ({failure})"
                )
        if drop:
            self._drop_groups(drop)

    def _groups_of(self, ids: np.ndarray) -> set[int]:
        roots = np.unique(self._roots[ids]).tolist()
        return {self._root_unit[r][0] for r in roots if r in self._root_unit}

    def _split_groups(self) -> set[int]:
        return {gi for s in self.propagation.splits for gi in self._groups_of(s.ids)}

    def _drop_groups(self, drop: set[int]) -> None:
        new_index: dict[int, int] = {}
        kept = []
        for g in self.groups:
            if g.index not in drop:
                new_index[g.index] = len(kept)
                kept.append(replace(g, index=len(kept)))
        self.groups = tuple(kept)
        with _gc_paused():
            self._root_unit = {
                r: (new_index[gi], pos)
                for r, (gi, pos) in self._root_unit.items()
                if gi in new_index
            }
        self._head_splits = self._find_head_splits()


def build_dependency_graph(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    ignore: Iterable[str] = (),
    check: bool = True,
) -> DependencyGraph:
    """Capture ``model`` and group its channels into removable units.

    Args:
        model: The model; it is not modified.
        example_inputs: Inputs of the right shape (one sample is enough).
        ignore: Module paths whose channels must be kept (and whose unknown operations are
            then accepted).
        check: Where a tracked dimension is reshaped into several (attention heads, channel
            shuffles), prune one unit on a copy and run it, keeping the channels if the
            model's code does not follow (see :attr:`DependencyGraph.notes`). Without the
            check, such channels are kept.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(
        ...     nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
        ... )
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
    graph = DependencyGraph(model, captured, propagate(captured, ignore))
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if graph.propagation.splits:
        if check:
            graph._check_splits(model, args)
        else:
            graph._drop_groups(graph._split_groups())
    return graph


def _try_removal(
    graph: DependencyGraph, model: nn.Module, args: tuple[Tensor, ...], removals: dict
) -> str | None:
    """Why pruning ``removals`` is not exact on ``args`` (None when it is)."""
    try:
        pruned = graph._copy(model, removals, "prune", share=True).eval()
        with torch.no_grad():
            got = _pytree.tree_leaves(pruned(*args))
        zeroed = graph._copy(model, removals, "zero", share=True).eval()
        with torch.no_grad():
            want = _pytree.tree_leaves(zeroed(*args))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    for a, b in zip(got, want, strict=False):
        if not isinstance(a, Tensor):
            continue
        if a.shape != b.shape:
            return f"output shape {tuple(a.shape)} != {tuple(b.shape)}"
        if a.is_floating_point():
            scale = 1.0 + float(b.abs().max()) if b.numel() else 1.0
            diff = float((a - b).abs().max()) if b.numel() else 0.0
            if not diff <= 1e-4 * scale:
                return f"output differs from the zeroed model by {diff:.3g}"
    return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _module_of_params(model: nn.Module) -> dict[str, str]:
    out = {}
    for mname, module in model.named_modules():
        for pname, _ in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            out[f"{mname}.{pname}" if mname else pname] = mname
    return out


def _groups(
    prop: Propagation,
) -> tuple[list[ChannelGroup], dict[int, tuple[int, int]], np.ndarray]:
    """Components of the coupling graph, as units grouped by the shape of their coupling.

    Returns the groups, the (group, position) of every unit's root id, and the root of every id.
    """
    space = prop.space
    roots = space.components()
    fixed = roots[FIXED]
    keys: list[tuple[str, int]] = sorted(
        {(o.fqn, o.dim) for _, _, o in space.owners if isinstance(o, ParamDim)}
    )
    parts_r, parts_k, parts_i = [], [], []
    bad: set[int] = set()
    extra: list[tuple[int, tuple[str, int], list[int]]] = []
    key_index = {k: i for i, k in enumerate(keys)}
    for start, stop, owner in space.owners:
        r = roots[start:stop]
        if isinstance(owner, ParamDim):
            live = np.nonzero(r != fixed)[0]
            parts_r.append(r[live])
            parts_k.append(np.full(len(live), key_index[(owner.fqn, owner.dim)]))
            parts_i.append(live)
        else:
            _slabs(owner, r, fixed, extra, bad)
    for root, key, indices in extra:
        if key not in key_index:
            key_index[key] = len(keys)
            keys.append(key)
        parts_r.append(np.full(len(indices), root))
        parts_k.append(np.full(len(indices), key_index[key]))
        parts_i.append(np.asarray(indices))
    if not parts_r:
        return [], {}, roots
    rank = np.argsort(np.argsort([f"{f}\0{d:04d}" for f, d in keys]))  # keys in name order
    r_all = np.concatenate(parts_r).astype(np.int64)
    k_all = rank[np.concatenate(parts_k).astype(np.int64)]
    i_all = np.concatenate(parts_i).astype(np.int64)
    keep = ~np.isin(r_all, np.fromiter(bad, dtype=np.int64, count=len(bad)))
    r_all, k_all, i_all = r_all[keep], k_all[keep], i_all[keep]
    order = np.lexsort((i_all, k_all, r_all))
    r_all, k_all, i_all = r_all[order], k_all[order], i_all[order]
    by_rank = [keys[i] for i in np.argsort(rank)]
    heads = {int(r) for s in prop.splits if s.is_heads for r in np.unique(roots[s.ids[:, :, 0]])}
    groups, root_unit = _assemble(r_all, k_all, i_all, by_rank, heads)
    return groups, root_unit, roots


def _assemble(
    r: np.ndarray, k: np.ndarray, i: np.ndarray, keys: list[tuple[str, int]], heads: set[int]
) -> tuple[list[ChannelGroup], dict[int, tuple[int, int]]]:
    """Units from (root, key, index) triples sorted by root then key; grouped by signature."""
    if not len(r):
        return [], {}
    cut = np.flatnonzero((np.diff(r) != 0) | (np.diff(k) != 0)) + 1
    starts, ends = np.concatenate([[0], cut]), np.concatenate([cut, [len(r)]])
    run_root, run_key = r[starts], k[starts]
    # One Slice per run of (root, key); most runs are a single index.
    index = i.tolist()
    if (ends - starts == 1).all():
        indices = [(x,) for x in index]
    else:
        indices = [tuple(index[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    fqns = [keys[x][0] for x in run_key.tolist()]
    dims = [keys[x][1] for x in run_key.tolist()]
    slices = list(map(Slice, fqns, dims, indices))
    unit_cut = np.flatnonzero(np.diff(run_root) != 0) + 1
    unit_starts = np.concatenate([[0], unit_cut]).tolist()
    unit_ends = np.concatenate([unit_cut, [len(run_root)]]).tolist()
    # A unit's signature: which (parameter, dim) it touches and how many indices of each.
    shape = np.ascontiguousarray(np.stack([run_key, ends - starts], axis=1).astype(np.int64))
    raw, width = shape.tobytes(), shape.itemsize * 2
    roots = run_root[unit_starts].tolist()
    by_signature: dict[bytes, list[int]] = defaultdict(list)
    for u, (a, b) in enumerate(zip(unit_starts, unit_ends, strict=True)):
        by_signature[raw[a * width : b * width]].append(u)
    groups, root_unit = [], {}
    for gi, members in enumerate(by_signature.values()):
        members.sort(key=lambda u: slices[unit_starts[u]].indices)
        units = tuple(Unit(tuple(slices[unit_starts[u] : unit_ends[u]])) for u in members)
        kind = "heads" if any(roots[u] in heads for u in members) else "channels"
        for pos, u in enumerate(members):
            root_unit[roots[u]] = (gi, pos)
        groups.append(ChannelGroup(gi, units, kind, ()))
    return groups, root_unit


def _slabs(
    owner: ParamElements,
    roots: np.ndarray,
    fixed: int,
    out: list[tuple[int, tuple[str, int], list[int]]],
    bad: set[int],
) -> None:
    """Entries of a parameter used directly may go only as whole slices along one dimension."""
    kept = tuple(n if n > 1 else 1 for n in owner.shape)
    big = [d for d, n in enumerate(kept) if n > 1]
    flat = roots.reshape(-1)
    coords = np.unravel_index(np.arange(flat.size), kept)
    for root in np.unique(flat):
        if root == fixed:
            continue
        where = flat == root
        count = int(where.sum())
        for d in big:
            along = np.unique(coords[d][where])
            if count == len(along) * (flat.size // kept[d]):
                out.append((int(root), (owner.fqn, d), along.tolist()))
                break
        else:
            if big:
                bad.add(int(root))


def _sliced(tensor: Tensor, dims: dict[int, list[int]]) -> Tensor:
    new = tensor.detach()
    for dim, removed in dims.items():
        keep = torch.tensor(sorted(set(range(new.shape[dim])) - set(removed)), dtype=torch.long)
        new = new.index_select(dim, keep)
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(new.contiguous(), requires_grad=tensor.requires_grad)
    return new.contiguous()


def _zeroed(tensor: Tensor, dims: dict[int, list[int]]) -> Tensor:
    new = tensor.detach().clone()
    for dim, removed in dims.items():
        new.index_fill_(dim, torch.tensor(removed, dtype=torch.long), 0.0)
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(new, requires_grad=tensor.requires_grad)
    return new


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
        elif isinstance(module, nn.RNNBase):
            module.hidden_size = module.weight_hh_l0.shape[1]
            module.input_size = module.weight_ih_l0.shape[1]
            module._init_flat_weights()


def _resync_conv(conv: nn.modules.conv._ConvNd, before: nn.modules.conv._ConvNd) -> None:
    w = conv.weight
    if before.groups > 1 and before.in_channels == before.groups and not conv.transposed:
        # Depthwise: whole groups were removed, one input channel each.
        conv.groups = w.shape[0] // (before.out_channels // before.groups)
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


def _update_head_attributes(module: nn.Module, old: int, new: int, head_dim: int) -> None:
    """Head counts (``num_heads``, ``num_attention_heads``) and head totals (``all_head_size``)."""
    for name, value in list(vars(module).items()):
        if isinstance(value, bool) or not isinstance(value, int) or "head" not in name.lower():
            continue
        lowered = name.lower()
        if value == old and ("num" in lowered or lowered in ("heads", "n_heads", "nheads")):
            setattr(module, name, new)
        elif value == old * head_dim and "all" in lowered:
            setattr(module, name, new * head_dim)
