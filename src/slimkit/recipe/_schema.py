"""The recipe schema and its loader, which names the YAML line of every problem it finds.

All validation happens here, before any data is loaded or any model built: step names, each step's
config, the model and the data set.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from slimkit.config import Config
from slimkit.data import DataConfig, list_datasets
from slimkit.errors import ConfigError, RecipeError
from slimkit.measure import ProfileConfig
from slimkit.models import list_models, model_info
from slimkit.recipe import _yaml_lines
from slimkit.recipe._steps import get_step, list_steps, unknown_step_message

__all__ = ["ModelRef", "Recipe", "Step", "load_recipe"]


class ModelRef(Config):
    """The model a recipe starts from: a registered model, or a folder saved by ``save_model``.

    In YAML, a bare string is a registered model name: ``model: fmnist_resnet``.

    Attributes:
        name: A name from :func:`slimkit.models.list_models`.
        kwargs: Keyword arguments of the model's builder (only with ``name``).
        path: A folder written by :func:`slimkit.serialize.save_model`, relative to the current
            directory (instead of ``name``).
    """

    name: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    path: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        if name is not None and name not in list_models():
            raise PydanticCustomError("unknown_model", _unknown("model", name, list_models()))
        return name

    @field_validator("kwargs")
    @classmethod
    def _known_kwargs(cls, kwargs: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if name is not None:
            allowed = sorted(model_info(name).defaults)
            unknown = sorted(set(kwargs) - set(allowed))
            if unknown:
                raise PydanticCustomError(
                    "unknown_kwargs",
                    f"model {name!r} takes no argument(s) {unknown}; it takes: {allowed}",
                )
        # As JSON would read them back (tuples become lists), so a saved recipe reloads equal.
        return json.loads(json.dumps(kwargs))

    @field_validator("path")
    @classmethod
    def _saved_model(cls, path: Path | None) -> Path | None:
        if path is not None and not (path / "model.json").is_file():
            raise PydanticCustomError(
                "not_a_saved_model",
                f"{str(path)!r} is not a folder written by slimkit.serialize.save_model "
                "(it has no model.json)",
            )
        return path

    @model_validator(mode="after")
    def _one_source(self) -> ModelRef:
        if (self.name is None) == (self.path is None):
            raise PydanticCustomError(
                "model_source", "give exactly one of 'name' (a registered model) or 'path'"
            )
        if self.path is not None and self.kwargs:
            raise PydanticCustomError("model_source", "'kwargs' only go with 'name', not 'path'")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # Only the fields of the source in use, so the saved recipe reads like a hand-written one.
        data = handler(self)
        if self.path is not None:
            return {"path": data["path"]}
        return {"name": data["name"], "kwargs": data["kwargs"]}


class Step(BaseModel):
    """One recipe step: a registered step name and an instance of that step's config class.

    Validated from the YAML form, a one-key mapping ``{name: config mapping or null}``, and
    written back in that form.

    Example:
        >>> Step.model_validate({"train": {"epochs": 1}}).config.epochs
        1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    config: Config

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, value: Any) -> Any:
        if isinstance(value, Step):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return {"name": value[0], "config": value[1]}
        if isinstance(value, Mapping) and len(value) == 1:
            ((name, config),) = value.items()
            return {"name": name, "config": config}
        raise PydanticCustomError("step_shape", _step_shape_message(value))

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in list_steps():
            raise PydanticCustomError("unknown_step", unknown_step_message(name))
        return name

    @field_validator("config", mode="before")
    @classmethod
    def _step_config(cls, config: Any, info: ValidationInfo) -> Config:
        name = info.data.get("name")
        if name is None:
            return Config()  # the name was invalid and is reported; do not pile errors on it
        config_cls = get_step(name).config_cls
        if isinstance(config, config_cls):
            return config
        if config is not None and not isinstance(config, Mapping):
            raise PydanticCustomError(
                "step_config",
                f"the config of step {name!r} must be a mapping of its fields "
                f"({', '.join(config_cls.model_fields)}) or empty, got {config!r}",
            )
        # A ValidationError raised here is re-rooted by pydantic at this field's location.
        return config_cls.model_validate(config or {})

    @model_serializer(mode="plain")
    def _dump(self, info: Any) -> dict[str, Any]:
        return {self.name: self.config.model_dump(mode=info.mode)}


class Recipe(BaseModel):
    """A validated recipe: where to start (model, data) and which steps to apply, in order.

    Attributes:
        name: A title for the report (optional).
        model: The starting model (a name, ``{name, kwargs}`` or ``{path}``).
        data: The data set (a name, or a :class:`~slimkit.data.DataConfig` mapping).
        seed: Seed of model initialization; passed to every step as ``ctx.seed``.
        profile: How every stage is measured (:class:`~slimkit.measure.ProfileConfig`).
        steps: The steps, each a :class:`Step`.

    Example:
        >>> recipe = Recipe.model_validate(
        ...     {"model": "fmnist_tiny", "data": "fashion-mnist", "steps": [{"train": {"lr": 0.1}}]}
        ... )
        >>> recipe.steps[0].config.lr, recipe.model.name
        (0.1, 'fmnist_tiny')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    model: ModelRef
    data: DataConfig
    seed: int = 0
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    steps: tuple[Step, ...]

    @field_validator("data", mode="before")
    @classmethod
    def _data_from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("data")
    @classmethod
    def _known_dataset(cls, data: DataConfig) -> DataConfig:
        if data.name not in list_datasets():
            message = _unknown("data set", data.name, list_datasets())
            raise _error_at(("name",), "unknown_dataset", message, data.name)
        return data

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_list(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise PydanticCustomError(
                "steps_list",
                f"steps must be a list of one-key mappings {{step name: config}} such as "
                f"'- train: {{epochs: 3}}', got a {type(value).__name__}",
            )
        return value

    @field_validator("profile", mode="before")
    @classmethod
    def _profile_default(cls, value: Any) -> Any:
        return {} if value is None else value

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready data, every default filled in, in the YAML form."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The recipe as YAML text that :func:`load_recipe` reads back to an equal recipe.

        Example:
            >>> recipe = load_recipe("model: fmnist_tiny\\ndata: fashion-mnist\\nsteps: []")
            >>> load_recipe(recipe.to_yaml()) == recipe
            True
        """
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


def load_recipe(source: str | Path | Mapping[str, Any]) -> Recipe:
    """Read and validate a recipe from a file, YAML text or a mapping.

    A :class:`~pathlib.Path`, or a one-line string that names a file or ends in ``.yaml``/``.yml``,
    is read as a file; any other string is YAML text.

    Raises:
        RecipeError: one line per problem, each as ``file:line: path: message``, where ``path``
            looks like ``steps[1].train.lr``.

    Example:
        >>> recipe = load_recipe('''
        ... model: fmnist_tiny
        ... data: {name: fashion-mnist, train_subset: 512}
        ... steps:
        ...   - train: {epochs: 1, lr: 0.1}
        ... ''')
        >>> recipe.steps[0].name, recipe.steps[0].config.lr, recipe.data.train_subset
        ('train', 0.1, 512)
        >>> try:
        ...     load_recipe("model: fmnist_tiny\\ndata: fashion-mnist\\nsteps: [train: {lr: 0}]")
        ... except RecipeError as exc:
        ...     print(exc)
        <recipe>:3: steps[0].train.lr: Input should be greater than 0 (got 0)
    """
    if isinstance(source, Mapping):
        return _validate(dict(source), "<recipe>", {})
    text, where = _read_source(source)
    data, lines = _yaml_lines.parse(text, where)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        hint = f" (if {source!r} names a file, it does not exist)" if isinstance(data, str) else ""
        raise RecipeError(
            f"{where}:1: the recipe is {kind}{hint}; it must be a mapping with the fields "
            f"{', '.join(Recipe.model_fields)}"
        )
    return _validate(data, where, lines)


def _read_source(source: str | Path) -> tuple[str, str]:
    """The YAML text and the name used in messages (the file's path, or ``<recipe>``)."""
    is_file = isinstance(source, Path) or (
        "\n" not in source and (source.endswith((".yaml", ".yml")) or Path(source).is_file())
    )
    if not is_file:
        return str(source), "<recipe>"
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc.strerror or exc}") from None


def _validate(data: dict[str, Any], where: str, lines: _yaml_lines.Lines) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_format_error(err, data, where, lines) for err in exc.errors()]
        raise RecipeError("\n".join(problems)) from None
    except ConfigError as exc:  # raised outside pydantic, by a registry lookup
        raise RecipeError(f"{where}: {exc}") from None


_QUOTES_INPUT = {
    "missing",
    "extra_forbidden",
    "unknown_model",
    "unknown_kwargs",
    "not_a_saved_model",
    "step_shape",
    "unknown_step",
    "step_config",
    "unknown_dataset",
}
"""Error types whose message already names the value (or has none to name)."""


def _format_error(err: Any, data: dict[str, Any], where: str, lines: _yaml_lines.Lines) -> str:
    path = _yaml_path(tuple(err["loc"]), data)
    line = _yaml_lines.line_of(path, lines)
    message = err["msg"]
    allowed = _allowed_fields(path, data) if err["type"] == "extra_forbidden" else None
    if allowed is not None:
        message += f"; allowed fields: {', '.join(allowed)}"
    elif err["type"] not in _QUOTES_INPUT and _is_scalar(err.get("input")):
        message += f" (got {err['input']!r})"
    location = f"{where}:{line}" if line is not None else where
    return f"{location}: {_yaml_lines.format_path(path) or '(top level)'}: {message}"


def _yaml_path(loc: tuple[Any, ...], data: dict[str, Any]) -> tuple[Any, ...]:
    """Pydantic's location of an error, as a path in the YAML document.

    A step's fields ``name`` and ``config`` exist only after validation; in YAML both are the
    step's single key, as in ``steps[1].train.lr``.
    """
    if len(loc) >= 3 and loc[0] == "steps" and loc[2] in ("name", "config"):
        steps = data.get("steps")
        raw = steps[loc[1]] if isinstance(steps, list) and isinstance(loc[1], int) else None
        if isinstance(raw, Mapping) and len(raw) == 1:
            return (*loc[:2], next(iter(raw)), *loc[3:])
    return loc


def _allowed_fields(path: tuple[Any, ...], data: dict[str, Any]) -> list[str] | None:
    """The fields allowed where an unknown field was found, for the first levels of a recipe."""
    owners: dict[str, type[BaseModel]] = {
        "model": ModelRef,
        "data": DataConfig,
        "profile": ProfileConfig,
    }
    if len(path) == 1:
        return list(Recipe.model_fields)
    if len(path) == 2 and path[0] in owners:
        return list(owners[path[0]].model_fields)
    if len(path) == 4 and path[0] == "steps" and path[2] in list_steps():
        return list(get_step(path[2]).config_cls.model_fields)
    return None


def _error_at(loc: tuple[Any, ...], kind: str, message: str, value: Any) -> ValidationError:
    """An error at ``loc`` inside the field being validated (pydantic prepends the field's loc)."""
    detail = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    return ValidationError.from_exception_data("Recipe", [detail])


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; registered {kind}s: {', '.join(known)}"


def _step_shape_message(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, value)) or "none"
        return (
            f"a step must be a mapping with one key, the step name; this one has {len(value)} "
            f"keys ({keys}). Put each step in its own list item: '- train: {{epochs: 3}}'"
        )
    return (
        f"a step must be a one-key mapping {{step name: config}}, got {value!r}; "
        "write for example '- train: {epochs: 3}' or '- train: {}'"
    )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 60
