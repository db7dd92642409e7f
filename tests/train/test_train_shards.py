"""Data-parallel pieces that need no second process: shards of the shuffle, threads per worker."""

from __future__ import annotations

import torch

from slimkit.data import TensorLoader
from slimkit.train import DistInfo, worker_threads
from slimkit.train._distributed import available_cores


def _loader(rank: int, world: int, batch: int) -> TensorLoader:
    inputs = torch.arange(103.0).reshape(103, 1)
    return TensorLoader(inputs, torch.arange(103), batch, shuffle=True, seed=3, drop_last=True,
                        rank=rank, world_size=world)  # fmt: skip


def test_shards_are_disjoint_and_together_make_the_one_process_batches() -> None:
    single = [y for _, y in _loader(0, 1, 16)]
    shards = [[y for _, y in _loader(r, 2, 8)] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 6
    seen = torch.cat([torch.cat(s) for s in shards])
    assert len(seen.unique()) == len(seen)  # disjoint
    for step, batch in enumerate(single):
        # Every global step sees the same samples as one process with the whole batch.
        together = torch.cat([shards[0][step], shards[1][step]])
        assert sorted(together.tolist()) == sorted(batch.tolist())


def test_each_worker_takes_its_share_of_the_cores() -> None:
    two = DistInfo(rank=0, world_size=2, local_world_size=2)
    share = max(1, available_cores() // 2)
    assert worker_threads(None, two) == share
    assert worker_threads(64, two) == share  # never more than the share
    assert worker_threads(1, two) == 1
    assert worker_threads(None, DistInfo()) is None  # one process: the caller's setting
