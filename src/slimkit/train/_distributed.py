"""Multi-process data-parallel training with ``torch.distributed``, as ``torchrun`` launches it.

One code path for one process and many: :func:`init_distributed` reads the environment that
``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, the rendezvous
address) and joins the process group when there is more than one process (gloo on CPU, nccl on
GPU); with one process it does nothing. The training loop then shards the in-memory batches,
wraps the model in ``DistributedDataParallel`` and lets rank 0 alone write checkpoints.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from slimkit._runtime import log

__all__ = [
    "DistInfo",
    "all_gather_rows",
    "available_cores",
    "barrier",
    "broadcast_module",
    "init_distributed",
    "sum_all",
    "sync_buffers",
    "worker_threads",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes.

    Attributes:
        rank: Global rank, 0 for the process that logs and writes checkpoints.
        world_size: Number of processes (1 without ``torchrun``).
        local_rank: Rank among the processes on this machine (its GPU, with nccl).
        local_world_size: Processes on this machine, which share its cores.
        backend: ``gloo`` or ``nccl``; ``None`` in one process.

    Example:
        >>> DistInfo().enabled, DistInfo().is_main
        (False, True)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The GPU of this process with nccl; ``None`` (the model's own device) otherwise."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else None


def init_distributed() -> DistInfo:
    """Join the process group described by the environment, once; a no-op in one process.

    An already initialized process group (``torch.distributed.init_process_group`` called by
    the program itself) is used as it is.

    Example:
        >>> init_distributed().world_size  # not launched by torchrun
        1
    """
    if dist.is_available() and dist.is_initialized():
        return _info()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed.")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(_destroy)
    return _info()


def _info() -> DistInfo:
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return DistInfo(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank() % local_world)),
        local_world_size=local_world,
        backend=str(dist.get_backend()),
    )


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(requested: int | None, info: DistInfo) -> int | None:
    """Torch threads for one training process: its share of the machine's cores.

    With several processes on a machine each gets ``cores // local_world_size`` threads (at
    least 1), and never more even when ``requested`` says so: two processes with two threads
    each on two cores slow each other down by an order of magnitude. In one process,
    ``requested`` is returned unchanged (``None`` keeps the process setting).

    Example:
        >>> worker_threads(3, DistInfo())
        3
        >>> worker_threads(None, DistInfo(rank=1, world_size=2, local_world_size=2)) >= 1
        True
    """
    if not info.enabled:
        return requested
    share = max(1, available_cores() // info.local_world_size)
    if requested is not None and requested > share:
        if info.is_main:
            log(
                f"using {share} thread(s) per process instead of {requested}: "
                f"{info.local_world_size} processes share {available_cores()} cores"
            )
        return share
    return requested or share


def barrier(info: DistInfo) -> None:
    """Wait for every process (nothing in one process)."""
    if info.enabled:
        dist.barrier()


def sum_all(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums of ``values`` over all processes (``values`` itself in one process)."""
    if not info.enabled:
        return values
    device = info.device or torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


@torch.no_grad()
def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (batch-norm statistics drift apart per shard)."""
    if info.enabled:
        for buffer in model.buffers():
            _broadcast(buffer)


@torch.no_grad()
def broadcast_module(model: nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's parameters and buffers."""
    if info.enabled:
        for tensor in [*model.parameters(), *model.buffers()]:
            _broadcast(tensor)


def _broadcast(tensor: Tensor) -> None:
    if tensor.is_contiguous():
        dist.broadcast(tensor, src=0)
        return
    flat = tensor.contiguous()  # channels-last kernels: gloo sends plain contiguous memory
    dist.broadcast(flat, src=0)
    tensor.copy_(flat)


def all_gather_rows(part: Tensor, total: int, info: DistInfo) -> Tensor:
    """Reassemble a tensor whose rows were computed round-robin: process ``r`` has rows
    ``r, r + world_size, ...`` of ``total`` rows, in order."""
    if not info.enabled:
        return part
    size = -(-total // info.world_size)
    padded = part.new_zeros((size, *part.shape[1:]))
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded.contiguous())
    out = part.new_empty((total, *part.shape[1:]))
    for rank, rows in enumerate(parts):
        count = len(range(rank, total, info.world_size))
        out[rank :: info.world_size] = rows[:count]
    return out
