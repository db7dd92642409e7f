"""``slimkit models``: the registered reference models."""

from __future__ import annotations

import argparse

from rich.table import Table

from slimkit.cli._common import add_json_flag, print_json, stdout
from slimkit.models import create_model, list_models, model_info


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list the registered models")
    parser.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter, e.g. 'fmnist_*'"
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        info = model_info(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        rows.append({"name": name, "params": params, "input_shape": list(info.input_shape),
                     "num_classes": info.num_classes, "description": info.description})  # fmt: skip
    if args.json:
        print_json(rows)
        return 0
    table = Table("model", "params", "input", "description")
    for r in rows:
        table.add_row(
            r["name"], f"{r['params']:,}", "x".join(map(str, r["input_shape"])), r["description"]
        )
    stdout.print(table)
    return 0
