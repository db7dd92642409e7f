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
    "slimkit.compile",
    "slimkit.compile._fuse",
    "slimkit.compile._aoti",
    "slimkit.compile._passes",
    "slimkit.compile._program",
    "slimkit.compile._backends",
    "slimkit.compile._select",
    "slimkit.compile._step",
    "slimkit.quantize",
    "slimkit.quantize._config",
    "slimkit.quantize._fake",
    "slimkit.quantize._float",
    "slimkit.quantize._observers",
    "slimkit.quantize._ptq",
    "slimkit.quantize._quantize",
    "slimkit.quantize._step",
    "slimkit.decompose",
    "slimkit.decompose._config",
    "slimkit.decompose._cp",
    "slimkit.decompose._decompose",
    "slimkit.decompose._gate",
    "slimkit.decompose._ranks",
    "slimkit.decompose._step",
    "slimkit.decompose._svd",
    "slimkit.decompose._tucker",
    "slimkit.distill",
    "slimkit.distill._config",
    "slimkit.distill._distill",
    "slimkit.distill._hooks",
    "slimkit.distill._loss",
    "slimkit.distill._step",
    "slimkit.train._distributed",
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
    assert result.failed == 0
