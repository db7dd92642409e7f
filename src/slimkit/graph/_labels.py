"""Channel labels: which prunable element every position of a tensor belongs to.

Each tensor in the captured graph gets a label array of the same rank. A dimension that carries
channel identity ("tracked") has its real size; one that does not (batch, spatial, sequence) is
collapsed to size 1, so labels stay small whatever the resolution. An entry is the id of an
element (one index of one dimension of one parameter), ``FIXED`` (may never be removed, such as the
model's input channels) or ``UNTRACKED`` (no channel identity).

Operations couple elements: an addition couples the channels of both operands position by
position. Couplings are recorded as edges; connected components of the edge graph are the units
that must be removed together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIXED = 0
UNTRACKED = -1


@dataclass(frozen=True)
class ParamDim:
    """Elements owned by one dimension of a parameter or buffer: index ``i`` is slice ``i``."""

    fqn: str
    dim: int
    size: int


@dataclass(frozen=True)
class ParamElements:
    """Elements owned one per entry of a parameter used directly in arithmetic (a class token).

    After the walk, the entries that went together must form whole slices along one dimension
    (e.g. every position of channel ``c`` of a position embedding); otherwise they are kept.
    """

    fqn: str
    shape: tuple[int, ...]


Owner = ParamDim | ParamElements


@dataclass
class Labels:
    """Labels of one tensor: ``ids`` broadcastable to ``shape``; size-1 dims are untracked."""

    ids: np.ndarray
    shape: tuple[int, ...]

    def tracked_dims(self) -> list[int]:
        return [d for d, n in enumerate(self.ids.shape) if n > 1]

    def materialize(self, dims: list[int]) -> np.ndarray:
        """The ids expanded to the real size along ``dims`` (collapsed elsewhere)."""
        target = [self.shape[d] if d in dims else self.ids.shape[d] for d in range(len(self.shape))]
        return np.broadcast_to(self.ids, target)


def untracked(shape: tuple[int, ...], value: int = UNTRACKED) -> Labels:
    return Labels(np.full([1] * len(shape), value, dtype=np.int64), tuple(shape))


@dataclass
class IdSpace:
    """Allocates element ids and records couplings between them."""

    next_id: int = 1
    owners: list[tuple[int, int, Owner]] = field(default_factory=list)
    edges: list[np.ndarray] = field(default_factory=list)  # each [2, k]

    def alloc(self, n: int, owner: Owner) -> np.ndarray:
        start = self.next_id
        self.next_id += n
        self.owners.append((start, self.next_id, owner))
        return np.arange(start, self.next_id, dtype=np.int64)

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple ``a`` and ``b`` position by position (broadcast); untracked ones are skipped."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        keep = (a >= 0) & (b >= 0) & (a != b)
        if not keep.any():
            return
        lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        if lo.size > 16:
            # Broadcasting repeats pairs; one sorted int64 key per pair drops them cheaply.
            key = np.unique((lo << 32) | hi)
            lo, hi = key >> 32, key & 0xFFFFFFFF
        self.edges.append(np.stack([lo, hi]))

    def fix(self, ids: np.ndarray) -> None:
        """Make every element in ``ids`` unremovable."""
        self.couple(ids, np.int64(FIXED))

    def couple_all(self, ids: np.ndarray) -> None:
        """Couple every tracked element of ``ids`` with every other: they go as one unit."""
        flat = np.unique(ids[ids >= 0])
        if len(flat) > 1:
            self.couple(flat[:1], flat[1:])

    def components(self) -> np.ndarray:
        """Representative id of every id (connected components of the coupling edges)."""
        parent = np.arange(self.next_id, dtype=np.int64)
        if not self.edges:
            return parent
        edges = np.concatenate(self.edges, axis=1)
        u, v = edges
        # Min-label propagation with pointer jumping: converges in O(log diameter) rounds.
        while True:
            low = np.minimum(parent[u], parent[v])
            changed = False
            for side in (u, v):
                before = parent[side]
                np.minimum.at(parent, side, low)
                changed |= bool((parent[side] != before).any())
            parent = parent[parent]
            if not changed:
                while not np.array_equal(parent, parent[parent]):
                    parent = parent[parent]
                return parent
