"""Registry of named data sets and the config that selects one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import Field

from slimkit.config import Config
from slimkit.data import _fashion_mnist as fmnist
from slimkit.data._loader import DataSplits
from slimkit.errors import ConfigError


class DataConfig(Config):
    """Which data set to load and how much of it.

    Attributes:
        name: A registered data set (see :func:`list_datasets`).
        root: Folder with the raw files; by default the data set's own search path.
        train_subset: Keep only this many training samples (a stratified-free random subset).
        test_subset: Keep only this many test samples (the first ones, fixed).
        seed: Seed of the subset draw.
    """

    name: str = "fashion-mnist"
    root: Path | None = None
    train_subset: int | None = Field(default=None, ge=1)
    test_subset: int | None = Field(default=None, ge=1)
    seed: int = 0


_LOADERS: dict[str, Callable[[DataConfig], DataSplits]] = {}


def register_dataset(
    name: str,
) -> Callable[[Callable[[DataConfig], DataSplits]], Callable[[DataConfig], DataSplits]]:
    """Register a function ``DataConfig -> DataSplits`` under ``name``."""

    def deco(fn: Callable[[DataConfig], DataSplits]) -> Callable[[DataConfig], DataSplits]:
        _LOADERS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Names of the registered data sets."""
    return sorted(_LOADERS)


def load_dataset(config: DataConfig | str) -> DataSplits:
    """Load a registered data set into memory, normalized and ready to batch."""
    if isinstance(config, str):
        config = DataConfig(name=config)
    if config.name not in _LOADERS:
        raise ConfigError(
            f"unknown data set {config.name!r}; available: {', '.join(list_datasets())}."
        )
    return _LOADERS[config.name](config)


@register_dataset("fashion-mnist")
def _load_fashion_mnist(config: DataConfig) -> DataSplits:
    train_x, train_y = fmnist.load_fashion_mnist("train", config.root)
    test_x, test_y = fmnist.load_fashion_mnist("test", config.root)
    if config.train_subset is not None:
        gen = torch.Generator().manual_seed(config.seed)
        idx = torch.randperm(len(train_x), generator=gen)[: config.train_subset]
        train_x, train_y = train_x[idx], train_y[idx]
    if config.test_subset is not None:
        test_x, test_y = test_x[: config.test_subset], test_y[: config.test_subset]
    return DataSplits(
        name="fashion-mnist",
        train_inputs=_normalize(train_x),
        train_labels=train_y,
        test_inputs=_normalize(test_x),
        test_labels=test_y,
        classes=fmnist.CLASSES,
    )


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255.0 - fmnist.MEAN) / fmnist.STD).unsqueeze(1).contiguous()
