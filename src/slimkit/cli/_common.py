"""Pieces shared by the subcommands: loading a model by name or folder, printing results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from slimkit.errors import ConfigError
from slimkit.models import create_model, list_models

stdout = Console()


def load_any_model(ref: str) -> nn.Module:
    """A registered model name, or a folder written by ``slimkit.serialize.save_model``."""
    if Path(ref).is_dir():
        from slimkit.serialize import load_model

        return load_model(ref)
    if ref in list_models():
        return create_model(ref).eval()
    raise ConfigError(
        f"{ref!r} is neither a registered model ({', '.join(list_models())}) "
        "nor a saved model folder."
    )


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
