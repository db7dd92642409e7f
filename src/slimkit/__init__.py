"""slimkit: make trained PyTorch models smaller, faster and cheaper to run, and measure it.

One verb per technique, each taking a model and a frozen config and returning a new model;
one measurement layer (:func:`profile`, :func:`compare`) judges every step.

Example:
    >>> import slimkit
    >>> model = slimkit.create_model("fmnist_tiny")
    >>> report = slimkit.profile(model, config=slimkit.ProfileConfig(memory=False, max_seconds=0.1))
    >>> report.params
    24058
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it. Imported on first use so that `import slimkit` stays
# light and optional integrations are only loaded by the verbs that need them. The verbs of the
# technique packages are not listed: their names are the packages' own, so they are called as
# `slimkit.prune.prune(...)`, `slimkit.decompose.decompose(...)` and so on.
_EXPORTS = {
    "profile": "slimkit.measure",
    "compare": "slimkit.measure",
    "ProfileConfig": "slimkit.measure",
    "train": "slimkit.train",
    "TrainConfig": "slimkit.train",
    "create_model": "slimkit.models",
    "list_models": "slimkit.models",
    "register_model": "slimkit.models",
    "DecomposeConfig": "slimkit.decompose",
    "load_dataset": "slimkit.data",
    "DataConfig": "slimkit.data",
    "save_model": "slimkit.serialize",
    "load_model": "slimkit.serialize",
    "load_recipe": "slimkit.recipe",
    "run_recipe": "slimkit.recipe",
    "register_step": "slimkit.recipe",
    "set_progress": "slimkit._runtime",
    "DistillConfig": "slimkit.distill",
    "SearchConfig": "slimkit.search",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
