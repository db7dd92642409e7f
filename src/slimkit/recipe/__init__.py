"""Recipes: chain compression steps in YAML, run them, and get one measured output folder.

A recipe names a starting model, a data set and a list of steps; every step is a registered
handler with a frozen config. The runner measures the model before the first step and after each
one, and writes the models, a JSON and Markdown report and trade-off plots.

Example:
    >>> from slimkit.recipe import builtin_recipe, list_steps, load_recipe
    >>> recipe = load_recipe(builtin_recipe("demo"))
    >>> [step.name for step in recipe.steps]
    ['train']
    >>> "train" in list_steps()
    True
"""

from __future__ import annotations

from slimkit.recipe._builtin import builtin_recipe
from slimkit.recipe._report import Stage
from slimkit.recipe._runner import RunResult, run_recipe
from slimkit.recipe._schema import ModelRef, Recipe, Step, load_recipe
from slimkit.recipe._steps import (
    StepContext,
    StepHandler,
    StepInfo,
    StepOutput,
    get_step,
    list_steps,
    register_step,
)

__all__ = [
    "ModelRef",
    "Recipe",
    "RunResult",
    "Stage",
    "Step",
    "StepContext",
    "StepHandler",
    "StepInfo",
    "StepOutput",
    "builtin_recipe",
    "get_step",
    "list_steps",
    "load_recipe",
    "register_step",
    "run_recipe",
]
