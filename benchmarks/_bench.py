"""Shared scaffolding of the benchmark scripts: arguments, a printed table, a JSON file.

Every benchmark is ``python benchmarks/NAME.py [--quick] [--out FILE]``: ``--quick`` finishes in
under a minute (a smoke run, its numbers are not the bars), the full run measures the bars.
Speed bars are ratios against a baseline measured in the same run, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slimkit._io import write_json
from slimkit.env import collect_env


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    *,
    trained: bool = False,
    parts: Sequence[str] = (),
) -> argparse.Namespace:
    """``--quick`` and ``--out``; with ``trained``, also ``--trained FOLDER`` to skip training;
    with ``parts``, also ``--parts a,b`` (default all), parsed into a set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smoke run in under a minute")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    if trained:
        parser.add_argument("--trained", type=Path, help="a trained model folder to start from")
    if parts:
        parser.add_argument("--parts", default=",".join(parts), help="which parts to run")
    args = parser.parse_args(argv)
    if parts:
        args.parts = set(args.parts.split(","))
        if args.parts - set(parts):
            parser.error(f"unknown parts {sorted(args.parts - set(parts))}; choose from {parts}")
    return args


def emit(
    name: str, args: argparse.Namespace, rows: list[dict[str, Any]], bars: list[dict[str, Any]]
) -> int:
    """Print the rows and the bars as tables, write JSON with ``--out``; exit 1 if a bar failed."""
    console = Console()
    if rows:
        table = Table(*rows[0].keys(), title=name)
        for row in rows:
            table.add_row(*(_fmt(v) for v in row.values()))
        console.print(table)
    if bars:
        table = Table("bar", "target", "measured", "met", title=f"{name}: bars")
        for bar in bars:
            table.add_row(
                bar["bar"], str(bar["target"]), _fmt(bar["measured"]), "yes" if bar["met"] else "NO"
            )
        console.print(table)
    result = {"benchmark": name, "quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "rows": rows, "bars": bars, "env": collect_env()}  # fmt: skip
    if args.out:
        write_json(args.out, result)
        console.print(f"wrote {args.out}")
    else:
        json.dumps(result, default=str)  # fail here, not later, on values JSON cannot hold
    return 0 if args.quick or all(b["met"] for b in bars) else 1


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit("this module is imported by the benchmark scripts")


TRAINED_RESNET = Path(".bench/fmnist_resnet_trained")


def trained_resnet(
    args: argparse.Namespace, data: Any, threads: int | None, quick: dict[str, Any] | None = None
) -> Any:
    """The trained fmnist_resnet: ``--trained FOLDER``, else its reference training.

    A full (not ``--quick``) training is saved to ``.bench/fmnist_resnet_trained``, so the next
    benchmark can take it with ``--trained``. ``quick`` overrides the training in quick runs.
    """
    from slimkit.models import create_model, model_info
    from slimkit.serialize import load_model, save_model
    from slimkit.train import TrainConfig, train

    if args.trained is not None:
        return load_model(args.trained)
    defaults = model_info("fmnist_resnet").train_defaults
    overrides = (quick or {"epochs": 1}) if args.quick else {}
    config = TrainConfig(**{**defaults, "threads": threads, **overrides})
    model = train(create_model("fmnist_resnet"), config, data).model
    if not args.quick:
        save_model(model, TRAINED_RESNET)
    return model
