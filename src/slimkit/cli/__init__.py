"""The ``slimkit`` command line: one module per subcommand.

Example:
    $ slimkit models
    $ slimkit profile --model fmnist_resnet --json
    $ slimkit compress --recipe recipe.yaml --out runs/mine
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from slimkit.cli import _compile, _compress, _env, _models, _profile, _search, _train
from slimkit.errors import SlimkitError

__all__ = ["main"]

_COMMANDS = (_profile, _train, _compress, _compile, _models, _env, _search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimkit",
        description="Make trained PyTorch models smaller and faster, and measure it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for a usage or input error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SlimkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
