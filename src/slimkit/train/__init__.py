"""Training and fine-tuning: one loop for every technique (progress, seeds, atomic checkpoints,
multi-process data parallel under ``torchrun``).

Example:
    >>> from slimkit.train import TrainConfig, train
    >>> TrainConfig(epochs=1).optimizer
    'sgd'
"""

from __future__ import annotations

from slimkit.train._config import TrainConfig
from slimkit.train._distributed import DistInfo, init_distributed, worker_threads
from slimkit.train._loop import Objective, TrainResult, cross_entropy_objective, train

__all__ = [
    "DistInfo",
    "Objective",
    "TrainConfig",
    "TrainResult",
    "cross_entropy_objective",
    "init_distributed",
    "train",
    "worker_threads",
]
