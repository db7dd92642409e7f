"""Shared fixtures: real Fashion-MNIST subsets and quiet progress output."""

from __future__ import annotations

import pytest

from slimkit._runtime import set_progress
from slimkit.data import DataConfig, DataSplits, load_dataset

set_progress(False)


@pytest.fixture(scope="session")
def fmnist_small() -> DataSplits:
    """2,000 real training images and the first 1,000 real test images."""
    return load_dataset(DataConfig(train_subset=2000, test_subset=1000))


@pytest.fixture(scope="session")
def fmnist_full() -> DataSplits:
    """The whole Fashion-MNIST data set (60,000 train, 10,000 test)."""
    return load_dataset(DataConfig())
