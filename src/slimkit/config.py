"""The base class of every slimkit configuration.

Configs are frozen pydantic models: validated on construction, hashable, serializable to the
YAML/JSON of recipes, and never mutated by the algorithm that reads them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from slimkit.errors import ConfigError

__all__ = ["Config", "format_validation_error"]


class Config(BaseModel):
    """Frozen, strictly validated configuration. Unknown fields are errors, not ignored.

    Example:
        >>> from slimkit.train import TrainConfig
        >>> TrainConfig(epochs=2).epochs
        2
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Config:
        """Validate ``data``, raising :class:`ConfigError` with one line per problem."""
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls.__name__)) from None


def format_validation_error(exc: ValidationError, where: str) -> str:
    """Turn pydantic's error into short lines that name the field and what is allowed."""
    lines = [f"invalid {where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {field}: {err['msg']}")
    return "\n".join(lines)
