"""Fixtures of the measurement tests: one thread, short timings."""

from __future__ import annotations

import pytest

from slimkit.measure import ProfileConfig


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test of this package runs on one intra-op thread."""


@pytest.fixture
def fast() -> ProfileConfig:
    """Short timings, no child process, one thread."""
    return ProfileConfig(threads=1, warmup=2, min_runs=5, max_seconds=0.2, memory=False)
