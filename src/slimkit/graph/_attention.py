"""Rules for contractions (``matmul`` family, ``einsum``) and attention.

All contractions go through one function that reads them as einsum equations: letters shared by
operands meet position by position (a contracted channel must go from both sides), and each
output letter carries the channels of the operands that vary along it. Attention heads are
recognized here: a :class:`Split` whose outer factor is batched in a contraction and whose inner
factor is contracted or carried along is a heads x head_dim split.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.fx import Node

from slimkit.graph._labels import FIXED, UNTRACKED, Labels, untracked
from slimkit.graph._propagate import Walker, aligned, arg, aten, axis, rule


@dataclass
class _Operand:
    letters: str
    shape: tuple[int, ...]
    lab: Labels | None = None  # an activation
    fqn: str | None = None  # a parameter used as a matrix: one id per index of each dim


def _operand(w: Walker, a: Any, letters: str) -> _Operand:
    if isinstance(a, Labels):
        return _Operand(letters, tuple(a.shape), lab=a)
    fqn = w.param_fqn(a)
    if fqn is not None and fqn not in w.param_elems:
        return _Operand(letters, w.shape(a), fqn=fqn)
    lab = w.labels(a)
    if lab is None:  # a Python number
        return _Operand(letters, (1,) * len(letters), lab=untracked((1,) * len(letters)))
    return _Operand(letters, tuple(lab.shape), lab=lab)


def _view(w: Walker, op: _Operand, keep: set[str], order: str) -> np.ndarray:
    """``op``'s ids laid out along ``order``; letters outside ``keep`` are taken at index 0.

    A parameter gets the ids of its one kept dimension; with several kept dimensions at once
    (a position would need two ids) it is kept whole.
    """
    shape = [1] * len(order)
    if op.fqn is not None:
        dims = [d for d, c in enumerate(op.letters) if c in keep and op.shape[d] > 1]
        if not dims:
            return np.full(shape, UNTRACKED, dtype=np.int64)
        if len(dims) > 1:
            _fix(w, op)
            return np.full(shape, FIXED, dtype=np.int64)
        ids = w.dim_ids(op.fqn, dims[0], op.shape[dims[0]])
        shape[order.index(op.letters[dims[0]])] = len(ids)
        return ids.reshape(shape)
    ids = op.lab.ids[tuple(slice(None) if c in keep else slice(0, 1) for c in op.letters)]
    present = sorted(op.letters, key=order.index)
    ids = np.transpose(ids, [op.letters.index(c) for c in present])
    for c, n in zip(present, ids.shape, strict=True):
        shape[order.index(c)] = n
    return ids.reshape(shape)


def contract(w: Walker, ops: list[_Operand], out: str, out_shape: tuple[int, ...]) -> Labels:
    """Labels of the contraction ``ops -> out`` (einsum semantics)."""
    if any(len(set(op.letters)) != len(op.letters) for op in ops):
        # A diagonal ("ii->i") ties positions of one operand together: keep everything.
        for op in ops:
            _fix(w, op)
        return untracked(out_shape, FIXED)
    order = "".join(dict.fromkeys("".join(op.letters for op in ops) + out))
    counts = Counter(c for op in ops for c in set(op.letters))
    shared = {c for c, n in counts.items() if n > 1}

    def real(op: _Operand) -> list[int]:
        return [op.shape[op.letters.index(c)] if c in op.letters else 1 for c in order]

    # Shared letters meet position by position (contracted or batched alike).
    w.meet([_view(w, op, shared & set(op.letters), order) for op in ops], [real(op) for op in ops])
    _mark_heads(w, ops, shared & set(out))
    # Output letters carry the channels of operands that vary along them; an operand whose
    # channels are all contracted contributes none (the sum just has fewer terms).
    views = [_view(w, op, set(out) & set(op.letters), order) for op in ops]
    carrying = [(v, real(op)) for v, op in zip(views, ops, strict=True) if max(v.shape) > 1]
    if not carrying:
        return untracked(out_shape)
    ids = w.meet([v for v, _ in carrying], [r for _, r in carrying])
    out_order = [c for c in order if c in out]
    ids = ids.reshape([ids.shape[order.index(c)] for c in out_order])  # the rest are size 1
    return Labels(np.transpose(ids, [out_order.index(c) for c in out]), out_shape)


def _fix(w: Walker, op: _Operand) -> None:
    if op.fqn is not None:
        for d, n in enumerate(op.shape):
            w.space.fix(w.dim_ids(op.fqn, d, n))
    elif op.lab is not None:
        w.space.fix(op.lab.ids)


def _mark_heads(w: Walker, ops: list[_Operand], batch: set[str]) -> None:
    """Mark splits whose outer factor runs along a batch letter and inner along another."""
    pending = [s for s in w.splits if not s.is_heads]
    if not pending or not batch:
        return
    for op in ops:
        if op.lab is None or op.lab.ids.size < 2:
            continue
        axes = {c: axis(op.lab.ids, d) for d, c in enumerate(op.letters)}
        outer_axes = [a for c, a in axes.items() if c in batch and len(a) > 1]
        inner_axes = [a for c, a in axes.items() if c not in batch and len(a) > 1]
        if not outer_axes or not inner_axes:
            continue
        for split in pending:
            heads_col = split.ids[:, :, 0]
            if any(np.isin(a, heads_col).all() for a in outer_axes) and any(
                _is_row(split.ids, a) for a in inner_axes
            ):
                split.is_heads = True


def _is_row(ids: np.ndarray, along: np.ndarray) -> bool:
    """Whether ``along`` holds exactly the ids of one inner row of a split."""
    if ids.shape[2] != len(along):
        return False
    where = np.argwhere(ids == along[0])
    return any(
        np.array_equal(np.sort(ids[lead, outer, :]), np.sort(along)) for lead, outer, _ in where
    )


# ------------------------------------------------------------------------------ rules


def _matmul_letters(a_rank: int, b_rank: int) -> tuple[str, str, str]:
    """Einsum subscripts of ``torch.matmul`` for operands of these ranks (batch dims broadcast)."""
    batch = string.ascii_uppercase[: max(a_rank, b_rank, 2) - 2]
    a = batch[len(batch) - max(a_rank - 2, 0) :] + ("mk" if a_rank > 1 else "k")
    b = batch[len(batch) - max(b_rank - 2, 0) :] + ("kn" if b_rank > 1 else "k")
    return a, b, batch + ("m" if a_rank > 1 else "") + ("n" if b_rank > 1 else "")


@rule("matmul", "bmm", "mm", "mv", "dot", "outer", "baddbmm", "addmm", "addbmm", "addmv")
def _matmul(w: Walker, node: Node) -> Labels:
    """The matmul family as einsum; an added ``input`` (bias) meets the product."""
    packet = node.target.overloadpacket
    added = packet in (aten.baddbmm, aten.addmm, aten.addbmm, aten.addmv)
    a, b = (node.args[1], node.args[2]) if added else (node.args[0], node.args[1])
    out_shape = w.shape(node)
    if packet is aten.outer:
        sa, sb, so = "m", "n", "mn"
    elif packet is aten.addbmm:
        sa, sb, so = "bmk", "bkn", "mn"
    else:
        sa, sb, so = _matmul_letters(len(w.shape(a)), len(w.shape(b)))
    ops = [_operand(w, a, sa), _operand(w, b, sb)]
    result = contract(w, ops, so, out_shape)
    if added:
        bias = _operand(w, node.args[0], string.ascii_uppercase[: len(w.shape(node.args[0]))])
        bias_lab = bias.lab if bias.lab is not None else _param_as_labels(w, bias)
        ids = w.meet(
            [result.ids, aligned(bias_lab, len(out_shape))],
            [out_shape, (1,) * (len(out_shape) - len(bias.shape)) + bias.shape],
        )
        result = Labels(ids, out_shape)
    return result


def _param_as_labels(w: Walker, op: _Operand) -> Labels:
    """A bias-like parameter: its last dimension's ids (the only one that may be tracked)."""
    if len(op.shape) == 0 or all(n == 1 for n in op.shape[:-1]):
        ids = w.dim_ids(op.fqn, len(op.shape) - 1, op.shape[-1]) if op.shape else np.array(-1)
        return Labels(ids.reshape((1,) * (len(op.shape) - 1) + (-1,)), op.shape)
    _fix(w, op)
    return untracked(op.shape, FIXED)


@rule("einsum")
def _einsum(w: Walker, node: Node) -> Labels:
    operands = list(node.args[1])
    terms, out = _parse_einsum(str(node.args[0]), [len(w.shape(a)) for a in operands])
    ops = [_operand(w, a, t) for a, t in zip(operands, terms, strict=True)]
    return contract(w, ops, out, w.shape(node))


def _parse_einsum(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Explicit subscripts per operand and output (ellipses expanded, implicit output made)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    spare = [c for c in string.ascii_letters if c not in eq]
    width = max([r - (len(t) - 3) for t, r in zip(terms, ranks, strict=True) if "..." in t] or [0])
    ell = "".join(spare[:width])
    expanded = []
    for t, r in zip(terms, ranks, strict=True):
        n = r - (len(t) - 3) if "..." in t else 0
        expanded.append(t.replace("...", ell[width - n :]))
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = Counter("".join(expanded))
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    return expanded, out


@rule("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
def _sdpa(w: Walker, node: Node) -> Any:
    """softmax(q k^T + mask) v: heads are batched, head_dim is contracted then carried by v.

    A mask carrying channels (a per-head bias) meets the scores' heads.
    """
    q, k, v = (w.labels(a) for a in node.args[:3])
    val = node.meta["val"]
    out_shape = tuple((val[0] if isinstance(val, list | tuple) else val).shape)
    rank = len(q.shape)
    lead = string.ascii_uppercase[: rank - 2]
    if rank < 3 or q.shape[-3] != k.shape[-3] or k.shape[-3] != v.shape[-3]:
        # Grouped-query attention repeats key/value heads: keep them all.
        for lab in (q, k, v):
            w.space.fix(lab.ids)
        scores = untracked(out_shape, FIXED)
        out = scores
    else:
        score_shape = (*q.shape[:-1], k.shape[-2])
        scores = contract(
            w, [_operand(w, q, lead + "id"), _operand(w, k, lead + "jd")], lead + "ij", score_shape
        )
        mask = w.labels(arg(node, 3, "attn_mask"))
        if mask is not None:
            ids = w.meet(
                [scores.ids, aligned(mask, rank)],
                [score_shape, (1,) * (rank - len(mask.shape)) + tuple(mask.shape)],
            )
            scores = Labels(ids, score_shape)
        ops = [_operand(w, scores, lead + "ij"), _operand(w, v, lead + "jd")]
        out = contract(w, ops, lead + "id", out_shape)
    if isinstance(val, list | tuple):
        rest = [untracked(tuple(x.shape)) if isinstance(x, torch.Tensor) else None for x in val[1:]]
        return [out, *rest]
    return out
