"""The decomposition modules' docstring examples run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "slimkit.decompose",
    "slimkit.decompose._config",
    "slimkit.decompose._cp",
    "slimkit.decompose._decompose",
    "slimkit.decompose._gate",
    "slimkit.decompose._ranks",
    "slimkit.decompose._step",
    "slimkit.decompose._svd",
    "slimkit.decompose._tucker",
]


@pytest.mark.parametrize("name", MODULES)
def test_decompose_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
