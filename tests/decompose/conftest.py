"""Fixtures of the decomposition tests: one thread, and a briefly trained fmnist_resnet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.data import DataSplits
from slimkit.models import create_model
from slimkit.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test of this package runs on one intra-op thread."""


@pytest.fixture(scope="session")
def resnet_one_epoch(fmnist_small: DataSplits) -> nn.Module:
    """fmnist_resnet after one epoch on 1,000 real images (about 60 % test accuracy)."""
    s = fmnist_small
    data = DataSplits(
        s.name,
        s.train_inputs[:1000],
        s.train_labels[:1000],
        s.test_inputs[:200],
        s.test_labels[:200],
        s.classes,
    )
    config = TrainConfig(epochs=1, lr=0.05, batch_size=64, threads=1, augment=False)
    torch.manual_seed(0)  # the same initial weights whichever test builds this fixture first
    return train(create_model("fmnist_resnet"), config, data).model.eval()
