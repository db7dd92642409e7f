"""The examples in slimkit.measure's docstrings must run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "slimkit.measure",
    "slimkit.measure._accuracy",
    "slimkit.measure._counts",
    "slimkit.measure._energy",
    "slimkit.measure._latency",
    "slimkit.measure._profile",
    "slimkit.measure._runner",
    pytest.param("slimkit.measure._memory", marks=pytest.mark.slow),  # spawns a child process
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
