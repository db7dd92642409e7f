"""``slimkit compile``: run the inference passes and pick the fastest backend on this machine."""

from __future__ import annotations

import argparse

from slimkit.cli._common import add_json_flag, load_any_model, print_json, stdout


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compile",
        help="fuse, export and time the model on every backend; keep the fastest faithful one",
    )
    parser.add_argument(
        "--model", required=True, help="registered model name or saved model folder"
    )
    parser.add_argument(
        "--backend", default="auto", help="'auto' (measure all) or one backend's name"
    )
    parser.add_argument(
        "--candidates", default=None, help="comma-separated backends for auto (default all)"
    )
    parser.add_argument(
        "--batch", default="1", help="batch size(s) to time, comma-separated; the first decides"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of every backend")
    parser.add_argument("--data", default="fashion-mnist", help="data set for the checks")
    parser.add_argument(
        "--check-samples", type=int, default=2000, help="test samples every backend is checked on"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per backend")
    parser.add_argument("--out", default=None, help="folder for the artifacts (ONNX, ...)")
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.compile import CompileConfig, compile_model
    from slimkit.compile._program import write_program
    from slimkit.data import load_dataset

    config = CompileConfig(
        backend=args.backend,
        candidates=tuple(args.candidates.split(",")) if args.candidates else None,
        batch_sizes=tuple(int(b) for b in args.batch.split(",")),
        threads=args.threads,
        max_seconds=args.seconds,
    )
    config.backend_names()  # unknown names fail here, before the model or data load
    model = load_any_model(args.model)
    data = load_dataset(args.data)
    n = args.check_samples
    result = compile_model(
        model,
        config,
        data.example_input(1),
        check_inputs=data.test_inputs[:n],
        check_labels=data.test_labels[:n],
        workdir=args.out,
    )
    program = write_program(result.model, data.test_inputs[:2], result.workdir)
    with result.runner:
        if args.json:
            print_json({"model": args.model, **result.to_dict(), "exported_program": program})
        else:
            stdout.print(result.table())
            stdout.print(f"chosen: {result.backend}; artifacts in {result.workdir}")
            stdout.print(f"PyTorch program (torch.export): {program}")
    return 0
