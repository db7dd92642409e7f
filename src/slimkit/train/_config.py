"""Configuration of the training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from slimkit.config import Config


class TrainConfig(Config):
    """How to train or fine-tune a model.

    Attributes:
        epochs: Passes over the training set (0 evaluates only).
        batch_size: Samples per optimizer step (under ``torchrun``: in all processes together,
            split evenly among them).
        optimizer: ``sgd`` (Nesterov momentum) or ``adamw``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: Decoupled for AdamW, L2 for SGD; not applied to biases and norms.
        schedule: ``onecycle`` (warm-up then cosine decay), ``cosine`` or ``constant``.
        label_smoothing: Cross-entropy label smoothing.
        augment: Random shifts and horizontal flips of the training images.
        channels_last: Train in channels-last memory format (faster convs on CPUs).
        seed: Seed of initialization-independent randomness (shuffle, augmentation, dropout).
        threads: Torch threads during training; ``None`` keeps the process setting. Under
            ``torchrun`` each process uses its share of the cores (``cores // processes``
            on the machine), at most this many.
        max_minutes: Stop after the epoch that crosses this wall-clock budget.
        checkpoint_dir: Folder for an atomic checkpoint after every epoch.
        resume: Continue from ``checkpoint_dir`` when it holds a checkpoint of this config.

    Example:
        >>> TrainConfig(epochs=2, lr=0.1).schedule
        'onecycle'
    """

    epochs: int = Field(default=3, ge=0)
    batch_size: int = Field(default=128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: bool = True
    channels_last: bool = True
    seed: int = 0
    threads: int | None = Field(default=None, ge=1)
    max_minutes: float | None = Field(default=None, gt=0)
    checkpoint_dir: Path | None = None
    resume: bool = True
