"""``slimkit compress`` and ``slimkit demo``: run a recipe and write its output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimkit.cli._common import add_json_flag, print_json, stdout


def register(sub: argparse._SubParsersAction) -> None:
    compress = sub.add_parser(
        "compress", help="run a YAML recipe (default: the built-in demo recipe)"
    )
    compress.add_argument("--recipe", type=Path, help="recipe file (default: the built-in demo)")
    compress.add_argument("--out", type=Path, default=Path("runs/compress"), help="output folder")
    compress.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in --out"
    )
    add_json_flag(compress)
    compress.set_defaults(run=run)
    demo = sub.add_parser("demo", help="run the built-in demo recipe on Fashion-MNIST end to end")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    add_json_flag(demo)
    demo.set_defaults(run=run, recipe=None)


def run(args: argparse.Namespace) -> int:
    from slimkit.recipe import builtin_recipe, load_recipe, run_recipe

    recipe = load_recipe(args.recipe or builtin_recipe("demo"))
    result = run_recipe(recipe, args.out, overwrite=args.overwrite)
    report = args.out / "report.json"
    if args.json:
        import json

        print_json(json.loads(report.read_text()))
    else:
        stdout.print((args.out / "report.md").read_text(), markup=False)
        stdout.print(f"\nOutputs in {args.out}/ (report.md, report.json, plots, model/)")
    return 0 if result is not None else 1
