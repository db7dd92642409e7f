"""``slimkit env``: versions, CPU features and threads, as recorded in every run's env.json."""

from __future__ import annotations

import argparse

from rich.table import Table

from slimkit.cli._common import add_json_flag, print_json, stdout


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="show the environment: versions, CPU features, threads")
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.env import collect_env

    env = collect_env()
    if args.json:
        print_json(env)
        return 0
    table = Table("key", "value", show_header=False)
    for key, value in _flatten(env):
        table.add_row(key, str(value))
    stdout.print(table)
    return 0


def _flatten(obj: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows
