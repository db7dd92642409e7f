"""Exceptions raised by slimkit.

Every error says what is wrong and how to fix it. All derive from :class:`SlimkitError`, so a
caller can catch the toolkit's own failures without hiding bugs elsewhere.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "MissingDependencyError",
    "RecipeError",
    "SerializationError",
    "SlimkitError",
]


class SlimkitError(Exception):
    """Base class of every error slimkit raises on purpose."""


class ConfigError(SlimkitError, ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


class RecipeError(ConfigError):
    """A recipe file is invalid; the message names the line and the allowed values."""


class DataError(SlimkitError):
    """A data set is missing or corrupt; the message says where slimkit looked and how to fix it."""


class SerializationError(SlimkitError):
    """A saved model cannot be written or read back."""


class MissingDependencyError(SlimkitError, ImportError):
    """An optional integration is not installed; the message gives the install command."""
