"""The examples in slimkit.search's docstrings (and the searched model's) must run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "slimkit.search",
    "slimkit.search._config",
    "slimkit.search._controller",
    "slimkit.search._distributed",
    "slimkit.search._fmnist_space",
    "slimkit.search._latency",
    "slimkit.search._objectives",
    "slimkit.search._search",
    "slimkit.search._space",
    "slimkit.search._step",
    "slimkit.search._strategies",
    "slimkit.search._supernet",
    "slimkit.models._searched",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
