"""Recipes shipped with slimkit, in ``slimkit/recipes/*.yaml``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from slimkit.errors import ConfigError


def builtin_recipe(name: str = "demo") -> Path:
    """The path of the built-in recipe ``name``, to read with :func:`load_recipe` or copy and edit.

    Raises:
        ConfigError: no such recipe; the message lists the built-in ones.

    Example:
        >>> builtin_recipe("demo").name
        'demo.yaml'
    """
    folder = resources.files("slimkit") / "recipes"
    resource = folder / f"{name}.yaml"
    if not resource.is_file():
        known = sorted(
            p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
        )
        raise ConfigError(
            f"unknown built-in recipe {name!r}; built-in recipes: {', '.join(known)}."
        )
    # slimkit is installed as plain files (no zip import), so the resource is a real path.
    return Path(str(resource))
