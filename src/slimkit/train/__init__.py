"""Training and fine-tuning: one loop for every technique (progress, seeds, atomic checkpoints).

Example:
    >>> from slimkit.train import TrainConfig, train
    >>> TrainConfig(epochs=1).optimizer
    'sgd'
"""

from __future__ import annotations

from slimkit.train._config import TrainConfig
from slimkit.train._loop import Objective, TrainResult, cross_entropy_objective, train

__all__ = ["Objective", "TrainConfig", "TrainResult", "cross_entropy_objective", "train"]
