"""``slimkit profile``: every measure of one model, on this machine."""

from __future__ import annotations

import argparse

from slimkit.cli._common import add_json_flag, load_any_model, print_json, stdout


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "profile", help="measure params, MACs, size, RAM, latency, throughput, accuracy"
    )
    parser.add_argument(
        "--model", required=True, help="registered model name or saved model folder"
    )
    parser.add_argument("--data", default="fashion-mnist",
                        help="data set for accuracy ('none' to skip)")  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads while timing (default 1)"
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="batch size of the throughput measure"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget of each timing")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RAM child process")
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.data import load_dataset
    from slimkit.measure import ProfileConfig, profile

    config = ProfileConfig(
        threads=args.threads,
        throughput_batch=args.batch,
        max_seconds=args.seconds,
        memory=not args.no_memory,
    )
    model = load_any_model(args.model)
    data = None if args.data == "none" else load_dataset(args.data)
    example = data.example_input(1) if data is not None else None
    report = profile(
        model, example, config=config, data=data.test_loader() if data is not None else None
    )
    if args.json:
        print_json({"model": args.model, **report.to_dict()})
    else:
        stdout.print(report.to_table())
    return 0
