"""Lazy imports of optional integrations, with an install hint when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from slimkit.errors import MissingDependencyError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an error that says which slimkit extra installs it.

    Args:
        module: Importable module name, for example ``"onnxruntime"``.
        extra: The slimkit extra that provides it, for example ``"onnx"``.
        purpose: What the caller wanted to do, used in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module!r}, which is not installed. "
            f"Install it with: pip install 'slimkit[{extra}]'"
        ) from exc


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None
