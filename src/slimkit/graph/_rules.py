"""Rules for layers, elementwise, shape, reduction and indexing operations.

Each rule returns the labels of the operation's output and couples the elements it ties
together. The docstrings say why a rule couples or fixes what it does; see ``_labels`` for
what labels are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.fx import Node

from slimkit.graph._labels import FIXED, UNTRACKED, Labels, untracked
from slimkit.graph._propagate import (
    Split,
    UnsupportedOperationError,
    Walker,
    _op_name,
    aligned,
    arg,
    aten,
    axis,
    broadcast_union,
    norm_dim,
    rule,
)

# ------------------------------------------------------------------------------ elementwise


@rule(
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_",
    "mish", "mish_", "dropout", "dropout_", "feature_dropout", "alpha_dropout",
    "clone", "contiguous", "alias", "detach", "detach_", "_to_copy", "to", "lift",
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "erf",
    "clamp", "clamp_", "clamp_min", "clamp_max", "square", "sign",
    "softplus", "lift_fresh_copy", "bernoulli", "bernoulli_", "div_", "mul_", "add_", "sub_",
    "logical_not", "floor", "ceil", "round", "cos", "sin", "isnan", "isinf", "log1p", "expm1",
    "add", "sub", "mul", "div", "maximum", "minimum", "where", "pow",
    "eq", "ne", "lt", "le", "gt", "ge", "masked_fill", "masked_fill_",
    "logical_and", "logical_or", "rsub", "fmod", "remainder", "copy", "copy_",
    "addcmul", "addcdiv", "lerp", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
    "__and__", "__or__", "__xor__", "__invert__", "logical_xor", "fill", "fill_",
    "trunc", "frac", "tan", "atan", "atan2", "asin", "acos", "sinh", "cosh", "exp2", "log2",
    "log10", "sgn", "nan_to_num", "xlogy", "gelu_backward", "logit", "selu", "celu", "glu_jvp",
    "float_power", "true_divide", "floor_divide", "heaviside", "hypot", "copysign", "signbit",
)  # fmt: skip
def _pointwise(w: Walker, node: Node) -> Labels:
    """Position by position: every tensor operand's channels meet the others'."""
    tensors = [w.labels(a) for a in (*node.args, *node.kwargs.values()) if isinstance(a, Node)]
    return broadcast_union(w, node, tensors)


@rule("type_as", "zeros_like", "ones_like", "empty_like", "full_like", "zero", "zero_")
def _like(w: Walker, node: Node) -> Labels:
    """Same shape as the first operand (which follows its channels); the values carry none."""
    return broadcast_union(w, node, [w.labels(node.args[0])])


# ------------------------------------------------------------------------------ layers


@rule("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d",
      "conv_transpose2d", "conv_transpose3d")  # fmt: skip
def _conv(w: Walker, node: Node) -> Labels:
    x, weight, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    packet = node.target.overloadpacket
    if packet is aten.convolution:
        transposed, groups = bool(node.args[6]), int(node.args[8])
    else:
        transposed = packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
        groups = int(arg(node, 7 if transposed else 6, "groups", 1))
    x_lab = w.labels(x)
    wd = w.weight_dims(weight)
    out_ids, in_ids = (wd[1], wd[0]) if transposed else (wd[0], wd[1])
    x_ch = x_lab.materialize([1])[(0, slice(None), *([0] * (x_lab.ids.ndim - 2)))]
    cin, cout = len(x_ch), w.shape(node)[1]
    per_in = cin // groups
    # A transposed weight is [Cin, Cout/groups, ...]: every group reuses the same output ids.
    out_ids_full = np.tile(out_ids, groups) if transposed else out_ids
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
        w.space.couple(w.weight_dims(bias)[0], out_ids_full)
    w.use("conv", weight=weight, bias=bias)
    out_shape = w.shape(node)
    ids = out_ids_full.reshape((1, cout) + (1,) * (len(out_shape) - 2))
    return Labels(ids, out_shape)


@rule("linear")
def _linear(w: Walker, node: Node) -> Labels:
    """Input features meet the weight's columns; outputs are its rows.

    Channels the input carries along other dimensions (rare: a token-mixing layer) stay on
    the output and meet every output feature, which keeps both.
    """
    x, weight, bias = node.args[0], node.args[1], arg(node, 2, "bias")
    x_lab = w.labels(x)
    out_ids, in_ids = w.weight_dims(weight)
    w.space.couple(axis(x_lab.materialize([x_lab.ids.ndim - 1]), -1), in_ids)
    if bias is not None:
        w.space.couple(w.weight_dims(bias)[0], out_ids)
    w.use("linear", weight=weight, bias=bias)
    out_shape = w.shape(node)
    ids = out_ids.reshape((1,) * (len(out_shape) - 1) + (-1,))
    rest = x_lab.ids[..., :1]
    if len(out_shape) > 1 and any(n > 1 for n in rest.shape):
        if w.param_fqn(x) is not None:
            w.space.fix(rest)  # a table read by a layer (position coordinates) keeps its rows
        rest = rest.reshape((1,) * (ids.ndim - rest.ndim) + rest.shape)
        ids = w.meet([rest, ids], [rest.shape, ids.shape])
    return Labels(ids, out_shape)


@rule("batch_norm", "_native_batch_norm_legit_no_training", "instance_norm")
def _batch_norm(w: Walker, node: Node) -> Any:
    """Per-channel statistics and affine: each channel meets its own entries, nothing else."""
    x = node.args[0]
    x_lab = w.labels(x)
    channels = axis(x_lab.materialize([1]), 1)
    for i in (1, 2, 3, 4):
        param = arg(node, i, "")
        if isinstance(param, Node):
            w.space.couple(channels, w.weight_dims(param)[0])
    w.use("batch_norm", weight=arg(node, 1, ""), bias=arg(node, 2, ""))
    if node.target.overloadpacket is aten._native_batch_norm_legit_no_training:
        return [x_lab, None, None]
    return x_lab


@rule("layer_norm", "native_layer_norm", "rms_norm")
def _layer_norm(w: Walker, node: Node) -> Any:
    """Statistics over channels change when channels go, so normalized channels are kept."""
    x_lab = _fix_normalized(w, node, weight_args=(2, 3))
    if node.target.overloadpacket is aten.native_layer_norm:
        return [Labels(x_lab.ids, x_lab.shape), None, None]
    return Labels(x_lab.ids, w.shape(node))


@rule("group_norm")
def _group_norm(w: Walker, node: Node) -> Labels:
    """Group statistics span channels: kept, like layer norm."""
    x_lab = _fix_normalized(w, node, weight_args=(2, 3))
    return Labels(x_lab.ids, w.shape(node))


def _fix_normalized(w: Walker, node: Node, weight_args: tuple[int, ...]) -> Labels:
    """Keep the channels a norm computes statistics over, and its affine parameters."""
    x_lab = w.labels(node.args[0])
    w.space.fix(x_lab.ids)
    for i in weight_args:
        param = arg(node, i, "")
        if isinstance(param, Node):
            for ids in w.weight_dims(param):
                w.space.fix(ids)
    return x_lab


@rule("embedding")
def _embedding(w: Walker, node: Node) -> Labels:
    """Looked-up rows carry the table's columns; the indices are positions, never channels."""
    weight, indices = node.args[0], node.args[1]
    rows, dim_ids = w.weight_dims(weight)
    w.space.fix(rows)  # token ids address rows by position
    idx = w.labels(indices)
    if idx is not None:
        w.space.fix(idx.ids)
    w.use("embedding", weight=weight)
    out_shape = w.shape(node)
    return Labels(dim_ids.reshape((1,) * (len(out_shape) - 1) + (-1,)), out_shape)


# ------------------------------------------------------------------------------ spatial


@rule(
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "max_pool2d_with_indices",
    "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "upsample_bicubic2d",
    "constant_pad_nd", "pad", "reflection_pad2d", "replicate_pad2d", "roll",
    "pixel_shuffle", "pixel_unshuffle",
)  # fmt: skip
def _spatial(w: Walker, node: Node) -> Any:
    """Operations on dimensions other than the channel one (checked, not assumed)."""
    x_lab = w.labels(node.args[0])
    out_val = node.meta["val"]
    out_shape = tuple(out_val[0].shape if isinstance(out_val, list | tuple) else out_val.shape)
    packet = node.target.overloadpacket
    if packet is aten.roll:
        moved = [norm_dim(d, len(x_lab.shape)) for d in _as_list(arg(node, 2, "dims", []))]
    elif packet in (aten.pixel_shuffle, aten.pixel_unshuffle):
        moved = list(range(1, len(out_shape)))
    elif packet in (aten.constant_pad_nd, aten.pad):
        pads = list(node.args[1])
        moved = [len(out_shape) - 1 - i // 2 for i in range(len(pads)) if pads[i] != 0]
    else:
        moved = [d for d in range(len(out_shape)) if out_shape[d] != x_lab.shape[d]]
    for d in moved:
        if x_lab.ids.shape[d] > 1:
            raise UnsupportedOperationError(
                f"{_op_name(node)} changes dimension {d}, which carries channels "
                f"(in module {w.module_path(node)!r}); ignore that module to keep its channels."
            )
    out = Labels(x_lab.ids, out_shape)
    return [out, untracked(out_shape)] if isinstance(out_val, list | tuple) else out


# ------------------------------------------------------------------------------ reductions


@rule("mean", "sum", "amax", "amin", "var", "std", "logsumexp", "max", "min", "argmax",
      "argmin", "norm", "linalg_vector_norm", "var_mean", "prod", "any", "all")  # fmt: skip
def _reduce(w: Walker, node: Node) -> Any:
    """A sum over fewer channels is still exact (the rest were zero); a mean or max is not."""
    x_lab = w.labels(node.args[0])
    ndim = len(x_lab.shape)
    packet = node.target.overloadpacket
    # norm(x, p, dim, keepdim): the order of the norm comes before the dims.
    first = 2 if packet in (aten.norm, aten.linalg_vector_norm) else 1
    dims_arg = arg(node, first, "dim", None)
    if dims_arg is None or (isinstance(dims_arg, list | tuple) and len(dims_arg) == 0):
        dims = list(range(ndim))
    else:
        dims = [norm_dim(int(d), ndim) for d in _as_list(dims_arg)]
    if packet in (aten.var, aten.std, aten.var_mean):
        keepdim = bool(node.kwargs.get("keepdim", False))
    else:
        keepdim = bool(arg(node, first + 1, "keepdim", False))
    reduced_tracked = [d for d in dims if x_lab.ids.shape[d] > 1]
    if reduced_tracked and packet is not aten.sum:
        w.space.fix(x_lab.ids)
    index = [slice(0, 1) if d in dims else slice(None) for d in range(ndim)]
    ids = x_lab.ids[tuple(index)]
    if reduced_tracked and packet is aten.sum:
        ids = np.where(ids >= 0, UNTRACKED, ids)  # the result no longer has those channels
    if not keepdim:
        ids = ids.reshape([n for d, n in enumerate(ids.shape) if d not in dims])
    out_val = node.meta["val"]
    if isinstance(out_val, list | tuple):
        return [Labels(ids, tuple(v.shape)) for v in out_val]
    return Labels(ids, tuple(out_val.shape))


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


@rule("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum")
def _softmax(w: Walker, node: Node) -> Labels:
    """Normalizing over channels: removing one changes the others, so they are kept."""
    x_lab = w.labels(node.args[0])
    dim = norm_dim(int(node.args[1]), len(x_lab.shape))
    if x_lab.ids.shape[dim] > 1:
        w.space.fix(x_lab.ids)
    return Labels(x_lab.ids, w.shape(node))


# ------------------------------------------------------------------------------ shapes


@rule("flatten", "view", "reshape", "_unsafe_view", "unflatten", "squeeze",
      "unsqueeze", "view_as", "reshape_as", "expand", "expand_as", "broadcast_to",
      "repeat")  # fmt: skip
def _reshape(w: Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    out_shape = w.shape(node)
    packet = node.target.overloadpacket
    if packet in (aten.expand, aten.expand_as, aten.broadcast_to):
        return Labels(aligned(x_lab, len(out_shape)), out_shape)
    if packet is aten.repeat:
        # Copies of a channel go together with it.
        reps = list(node.args[1])
        ids = aligned(x_lab, len(reps))
        for d, r in enumerate(reps):
            if r > 1 and ids.shape[d] > 1:
                ids = np.concatenate([ids] * r, axis=d)
        return Labels(ids, out_shape)
    return _general_reshape(w, x_lab, out_shape)


def _general_reshape(w: Walker, x_lab: Labels, out_shape: tuple[int, ...]) -> Labels:
    """Map groups of input dims to groups of output dims with equal products, then reshape ids.

    Ids are reshaped literally, so every position keeps its element. A tracked dimension cut
    into several is recorded as a :class:`Split`.
    """
    in_shape = x_lab.shape
    tracked_in = [n > 1 for n in x_lab.ids.shape]
    pieces = _reshape_groups(in_shape, out_shape)
    out_ids_shape: list[int] = []
    full_dims: list[int] = []
    for in_dims, out_dims in pieces:
        if any(tracked_in[d] for d in in_dims):
            out_ids_shape += [out_shape[d] for d in out_dims]
            full_dims += in_dims
        else:
            out_ids_shape += [1] * len(out_dims)
    ids = np.ascontiguousarray(x_lab.materialize(full_dims)).reshape(out_ids_shape)
    for in_dims, out_dims in pieces:
        big_out = [d for d in out_dims if out_shape[d] > 1]
        big_in = [d for d in in_dims if in_shape[d] > 1]
        if len(big_in) == 1 and tracked_in[big_in[0]] and len(big_out) > 1:
            _record_split(w, ids, big_out)
    return Labels(ids, out_shape)


def _record_split(w: Walker, ids: np.ndarray, dims: list[int]) -> None:
    index = [0] * ids.ndim
    for d in dims:
        index[d] = slice(None)
    block = ids[tuple(index)]
    outer, inner = block.shape[-2:]
    module = w.module_path(w.node) if w.node is not None else None
    w.splits.append(Split(block.reshape(-1, outer, inner), module or ""))


def _reshape_groups(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[list[int], list[int]]]:
    """Pair consecutive input and output dims whose sizes multiply to the same number."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        gi: list[int] = []
        gj: list[int] = []
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
            if pi == pj and gi and gj:
                # Absorb trailing size-1 dims on both sides into this group.
                while i < len(in_shape) and in_shape[i] == 1 and not _next_is_one(out_shape, j):
                    gi.append(i)
                    i += 1
                while j < len(out_shape) and out_shape[j] == 1 and not _next_is_one(in_shape, i):
                    gj.append(j)
                    j += 1
                break
            if i == len(in_shape) and j == len(out_shape):
                break
        groups.append((gi, gj))
    return groups


def _next_is_one(shape: Sequence[int], k: int) -> bool:
    return k < len(shape) and shape[k] == 1


@rule("permute", "transpose", "t", "movedim", "swapaxes", "numpy_T", "mT")
def _permute(w: Walker, node: Node) -> Labels:
    x_lab = w.labels(node.args[0])
    ndim = len(x_lab.shape)
    packet = node.target.overloadpacket
    if packet is aten.permute:
        order = [norm_dim(int(d), ndim) for d in node.args[1]]
    elif packet in (aten.transpose, aten.swapaxes):
        a, b = norm_dim(int(node.args[1]), ndim), norm_dim(int(node.args[2]), ndim)
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
    elif packet is aten.movedim:
        order = list(np.moveaxis(np.arange(ndim), node.args[1], node.args[2]))
    elif packet is aten.mT:
        order = [*range(ndim - 2), ndim - 1, ndim - 2]
    else:
        order = list(range(ndim))[::-1]
    return Labels(np.transpose(x_lab.ids, order), w.shape(node))


@rule("cat", "concat", "stack")
def _cat(w: Walker, node: Node) -> Labels:
    """Along channels each part keeps its own slice; along anything else parts meet."""
    parts = [w.labels(t) for t in node.args[0]]
    out_shape = w.shape(node)
    dim = norm_dim(int(arg(node, 1, "dim", 0)), len(out_shape))
    if node.target.overloadpacket is aten.stack:
        parts = [
            Labels(np.expand_dims(p.ids, dim), (*p.shape[:dim], 1, *p.shape[dim:])) for p in parts
        ]
    if all(p.ids.shape[dim] == 1 for p in parts):
        return broadcast_union(w, node, parts)
    if any(n > 1 for p in parts for d, n in enumerate(p.ids.shape) if d != dim):
        # Channels along two dims at once: too entangled to slice safely.
        for p in parts:
            w.space.fix(p.ids)
        return untracked(out_shape, FIXED)
    ids = np.concatenate([p.materialize([dim]) for p in parts], axis=dim)
    return Labels(ids, out_shape)


@rule("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split")
def _split(w: Walker, node: Node) -> list[Labels]:
    """Cut points are positions: removing a channel would move them, so channels are kept.

    Unbinding the leading factor of a split (``q, k, v = qkv.unbind(0)``) is the exception:
    that factor never shrinks.
    """
    x_lab = w.labels(node.args[0])
    vals = node.meta["val"]
    packet = node.target.overloadpacket
    dim = norm_dim(int(arg(node, 1 if packet is aten.unbind else 2, "dim", 0)), len(x_lab.shape))
    tracked = x_lab.ids.shape[dim] > 1
    if tracked and not (packet is aten.unbind and _is_lead_axis(w, axis(x_lab.ids, dim))):
        w.space.fix(x_lab.ids)
    outs, start = [], 0
    for v in vals:
        shape = tuple(v.shape)
        size = 1 if packet is aten.unbind else shape[dim]
        ids = np.take(x_lab.ids, range(start, start + size), axis=dim) if tracked else x_lab.ids
        if packet is aten.unbind:
            ids = ids.reshape(ids.shape[:dim] + ids.shape[dim + 1 :])
        outs.append(Labels(ids, shape))
        start += size
    return outs


def _is_lead_axis(w: Walker, ids: np.ndarray) -> bool:
    """Whether ``ids`` run along a factor of a split that keeps its size when pruned.

    The leading factor never shrinks; the outer one does only for heads, so a split whose outer
    factor is taken apart by position is recorded as such and never loses whole heads.
    """
    for s in w.splits:
        if s.ids.shape[0] == len(ids) and np.array_equal(s.ids[:, 0, 0], ids):
            return True
        if s.ids.shape[1] == len(ids) and np.array_equal(s.ids[0, :, 0], ids):
            s.outer_by_position = True
            return True
    return False


@rule("slice", "narrow", "select", "index_select")
def _slice(w: Walker, node: Node) -> Labels:
    """Taking channels by position keeps them: after pruning the positions would shift."""
    x_lab = w.labels(node.args[0])
    ndim = len(x_lab.shape)
    packet = node.target.overloadpacket
    dim = norm_dim(int(arg(node, 1, "dim", 0)), ndim)
    out_shape = w.shape(node)
    if x_lab.ids.shape[dim] == 1:
        ids = x_lab.ids if packet is not aten.select else np.take(x_lab.ids, 0, axis=dim)
        return Labels(ids, out_shape)
    size = x_lab.shape[dim]
    if packet is aten.select:
        index = int(node.args[2]) % size
        if not _is_lead_axis(w, axis(x_lab.ids, dim)):
            w.space.fix(x_lab.ids)
        return Labels(np.take(x_lab.ids, index, axis=dim), out_shape)
    if packet is aten.index_select:
        w.space.fix(x_lab.ids)
        return untracked(out_shape, FIXED)
    if packet is aten.narrow:
        start, length = int(node.args[2]), int(node.args[3])
        positions = range(size)[start : start + length]
    else:
        positions = range(size)[
            slice(arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step"))
        ]
    if positions == range(size):
        return Labels(x_lab.ids, out_shape)  # the whole dimension: nothing moves
    w.space.fix(x_lab.ids)
    return Labels(np.take(x_lab.ids, list(positions), axis=dim), out_shape)


@rule("index", "gather")
def _index(w: Walker, node: Node) -> Labels:
    """Indexing by computed positions: indexed channels are kept.

    A parameter indexed along some dims (a relative position bias table indexed by a
    position map) may still lose whole slices along its other dims: every entry of such a
    slice goes with it.
    """
    x_lab = w.labels(node.args[0])
    out_shape = w.shape(node)
    if node.target.overloadpacket is not aten.index:
        w.space.fix(x_lab.ids)
        return untracked(out_shape, FIXED)
    indices = list(node.args[1])
    indexed = [d for d, ix in enumerate(indices) if ix is not None]
    for ix in indices:
        lab = w.labels(ix)
        if lab is not None:
            w.space.fix(lab.ids)
    rest = [d for d in range(len(x_lab.shape)) if d not in indexed]
    if indexed != list(range(len(indexed))):
        w.space.fix(x_lab.ids)
        return untracked(out_shape, FIXED)
    ids = x_lab.ids
    if any(ids.shape[d] > 1 for d in indexed):
        if w.param_fqn(node.args[0]) is not None and any(ids.shape[d] > 1 for d in rest):
            head = ids[(slice(0, 1),) * len(indexed)]
            w.space.couple(ids, head)
            ids = head
        else:
            w.space.fix(ids)
    # Advanced indexing on leading dims: the indexed dims become the index's shape.
    lead = len(out_shape) - len(rest)
    kept = ids[(0,) * len(indexed)]
    return Labels(kept.reshape((1,) * lead + kept.shape), out_shape)


@rule("index_put", "index_put_", "_unsafe_index_put")
def _index_put(w: Walker, node: Node) -> Labels:
    """Writing values at computed positions: the indexed dims must carry no channels.

    The values' trailing dims line up with the target's non-indexed dims and meet them; values
    with channels along the indexed dims are kept.
    """
    x_lab = w.labels(node.args[0])
    indices = list(node.args[1])
    values = w.labels(node.args[2])
    for ix in indices:
        lab = w.labels(ix)
        if lab is not None:
            w.space.fix(lab.ids)
    indexed = [d for d, ix in enumerate(indices) if ix is not None]
    if indexed != list(range(len(indexed))) or any(x_lab.ids.shape[d] > 1 for d in indexed):
        w.space.fix(x_lab.ids)
    n_rest = len(x_lab.shape) - len(indexed)
    operands = [x_lab]
    if values is not None:
        k = max(0, values.ids.ndim - n_rest)
        if any(n > 1 for n in values.ids.shape[:k]):
            w.space.fix(values.ids)
        else:
            tail = values.ids.reshape(values.ids.shape[k:])
            operands.append(Labels(tail, tuple(values.shape[k:])))
    return broadcast_union(w, node, operands)


# ------------------------------------------------------------------------------ constants


@rule("arange", "zeros", "ones", "full", "empty", "randn", "rand", "scalar_tensor",
      "tensor", "linspace", "eye", "new_zeros", "new_ones", "new_empty", "new_full",
      "empty_strided", "tril", "triu")  # fmt: skip
def _factory(w: Walker, node: Node) -> Labels:
    """New tensors carry no channels (``tril``/``triu`` keep their input's)."""
    if node.target.overloadpacket in (aten.tril, aten.triu):
        return Labels(w.labels(node.args[0]).ids, w.shape(node))
    return untracked(w.shape(node))


@rule("sym_size", "sym_numel", "sym_stride", "item", "_assert_tensor_metadata",
      "_assert_scalar", "sym_constrain_range_for_size", "_local_scalar_dense")  # fmt: skip
def _no_tensor(w: Walker, node: Node) -> None:
    return None
