"""In-memory data sets and a fast batch iterator.

Small image data sets fit in memory as one tensor; slicing batches out of it is an order of
magnitude faster on a 2-core CPU than a per-sample ``DataLoader`` with collation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from slimkit.errors import DataError


class TensorLoader:
    """Iterate ``(inputs, labels)`` batches over tensors held in memory.

    Args:
        inputs: ``[N, ...]`` float tensor, already normalized.
        labels: ``[N]`` int64 tensor.
        batch_size: Samples per batch.
        shuffle: Reshuffle every epoch, reproducibly from ``seed`` and the epoch number.
        augment: Random shifts (pad 2, crop) and horizontal flips, applied per batch.
        seed: Seed of the shuffle and augmentation.
        drop_last: Skip the last incomplete batch.
        rank: This process's shard, in multi-process (data parallel) training.
        world_size: Number of shards: every process draws the same shuffle of all samples and
            keeps every ``world_size``-th one from position ``rank`` (the remainder of the
            division is left out), so the shards are disjoint and of equal length.

    Example:
        >>> import torch
        >>> loader = TensorLoader(torch.zeros(10, 1, 4, 4), torch.zeros(10, dtype=torch.long), 4)
        >>> [x.shape[0] for x, _ in loader]
        [4, 4, 2]
    """

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(inputs) != len(labels):
            raise DataError(f"{len(inputs)} inputs but {len(labels)} labels: they must match.")
        if len(inputs) == 0:
            raise DataError("the data set is empty.")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}.")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size={world_size}), got {rank}.")
        if len(inputs) < world_size:
            raise DataError(f"{len(inputs)} samples cannot be split into {world_size} shards.")
        self.rank, self.world_size = rank, world_size
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last = seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = self.shard_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.inputs)

    @property
    def shard_size(self) -> int:
        """Samples this process iterates over (all of them in one process)."""
        return len(self.inputs) // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the shuffle of ``epoch`` (for resuming mid-training)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.inputs)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            order = order[: self.shard_size * self.world_size][self.rank :: self.world_size]
            # Each shard its own augmentation draws, after the shuffle all shards share.
            gen.manual_seed((self.seed * 100_003 + self.epoch) * 1_009 + self.rank + 1)
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            x, y = self.inputs[idx], self.labels[idx]
            if self.augment:
                x = _shift_and_flip(x, gen)
            yield x, y


def _shift_and_flip(x: Tensor, gen: torch.Generator, pad: int = 2) -> Tensor:
    """Random translation by up to ``pad`` pixels and horizontal flip, one draw per sample."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@dataclass(frozen=True)
class DataSplits:
    """A classification data set held in memory: normalized inputs and labels per split."""

    name: str
    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.train_inputs.shape[1:]))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_loader(
        self,
        batch_size: int,
        *,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> TensorLoader:
        """Shuffled training batches (the last partial batch dropped, for stable BatchNorm).

        ``rank``/``world_size`` select one process's shard in data-parallel training.
        """
        drop_last = len(self.train_inputs) // world_size > batch_size
        return TensorLoader(
            self.train_inputs, self.train_labels, batch_size, shuffle=True, augment=augment,
            seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
        )  # fmt: skip

    def test_loader(self, batch_size: int = 512) -> TensorLoader:
        """All test samples in order."""
        return TensorLoader(self.test_inputs, self.test_labels, batch_size)

    def calibration_inputs(self, num_samples: int, seed: int = 0) -> Tensor:
        """A reproducible random subset of training inputs, for calibration or importance."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train_inputs), generator=gen)[:num_samples]
        return self.train_inputs[idx]

    def example_input(self, batch_size: int = 1) -> Tensor:
        """The first ``batch_size`` test inputs (real data, fixed, for profiling)."""
        return self.test_inputs[:batch_size]
