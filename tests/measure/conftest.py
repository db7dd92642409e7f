"""Fixtures of the measurement tests: one thread, short timings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from slimkit.measure import ProfileConfig


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The test machine is shared: one intra-op thread everywhere, not only inside timings.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fast() -> ProfileConfig:
    """Short timings, no child process, one thread."""
    return ProfileConfig(threads=1, warmup=2, min_runs=5, max_seconds=0.2, memory=False)
