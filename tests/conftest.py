"""Shared fixtures: real Fashion-MNIST subsets and quiet progress output."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (the test machine is shared); restored afterwards.

    Packages whose every test should run so use it from an autouse fixture in their conftest.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
