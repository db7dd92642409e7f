"""The examples in the distillation package's docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "slimkit.distill",
    "slimkit.distill._config",
    "slimkit.distill._distill",
    "slimkit.distill._hooks",
    "slimkit.distill._loss",
    "slimkit.distill._step",
    "slimkit.train._distributed",
]


@pytest.mark.parametrize("name", MODULES)
def test_distill_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
