"""The docstrings' examples are part of the documentation: they must run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "slimkit",
    "slimkit.config",
    "slimkit.data",
    "slimkit.data._loader",
    "slimkit.data._text",
    "slimkit.models",
    "slimkit.models._registry",
    "slimkit.serialize",
    "slimkit.train",
    "slimkit.train._config",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
