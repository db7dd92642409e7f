"""``slimkit search``: architecture search in one process or on shared Optuna storage.

    slimkit search space   [--config search.yaml]              # size, decisions and a sample
    slimkit search run     --config search.yaml --out runs/s   # one process: trials, plot, model
    slimkit search supernet --config search.yaml --out runs/supernet   # train it once
    slimkit search create  --config search.yaml --storage runs/s.journal --study fmnist
    slimkit search worker  --storage runs/s.journal --study fmnist --workers 2   # N times
    slimkit search status  --storage runs/s.journal --study fmnist [--out runs/s]

``--storage`` is a journal file path (one machine) or a database URL (``postgresql://user:pw@
host/db`` across machines, ``sqlite:///s.db``); on a database each worker's trial sends a
heartbeat and the trial of a killed worker is retried after ``--grace`` seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from slimkit.cli._common import add_json_flag, print_json, stdout
from slimkit.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("search", help="architecture search (spaces, strategies, workers)")
    commands = parser.add_subparsers(dest="search_command", required=True, metavar="ACTION")

    space = commands.add_parser("space", help="the search space: size, decisions and a sample")
    _config_args(space, required=False)
    space.add_argument("--seed", type=int, default=0, help="seed of the sample")
    add_json_flag(space)
    space.set_defaults(run=run_space)

    run = commands.add_parser("run", help="search in this process; write trials, plot, model")
    _config_args(run)
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--trials", type=int, help="overrides the config's trials")
    add_json_flag(run)
    run.set_defaults(run=run_search)

    supernet = commands.add_parser("supernet", help="train the one-shot supernet once and save it")
    _config_args(supernet)
    supernet.add_argument("--out", type=Path, required=True, help="folder for the supernet")
    supernet.add_argument("--threads", type=int, help="torch threads while training")
    supernet.set_defaults(run=run_supernet)

    create = commands.add_parser("create", help="create a study on storage (once)")
    _config_args(create)
    _storage_args(create)
    create.add_argument("--trials", type=int, help="overrides the config's trials")
    create.set_defaults(run=run_create)

    worker = commands.add_parser("worker", help="evaluate a study's trials until none is left")
    _storage_args(worker)
    worker.add_argument(
        "--workers", type=int, default=1,
        help="workers on this machine: torch threads = cores // workers",
    )  # fmt: skip
    worker.add_argument("--threads", type=int, help="torch threads (overrides --workers)")
    worker.add_argument("--max-trials", type=int, help="stop after this many trials")
    add_json_flag(worker)
    worker.set_defaults(run=run_worker)

    status = commands.add_parser("status", help="a study's progress and best candidates")
    _storage_args(status)
    status.add_argument("--out", type=Path, help="write trials.json, pareto.png and the model")
    add_json_flag(status)
    status.set_defaults(run=run_status)


def _config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", type=Path, required=required,
                        help="YAML file of SearchConfig fields")  # fmt: skip


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", required=True,
        help="journal file path or database URL (postgresql://, sqlite:///)",
    )  # fmt: skip
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--heartbeat", type=int, default=10,
                        help="database storage: seconds between a trial's heartbeats")  # fmt: skip
    parser.add_argument("--grace", type=int,
                        help="database storage: silence after which a trial is retried "
                        "(default twice the heartbeat)")  # fmt: skip


def _load_config(path: Path | None, **overrides: Any) -> Any:
    from slimkit.search import SearchConfig

    fields: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"search config {path} does not exist.")
        fields = yaml.safe_load(path.read_text()) or {}
        if not isinstance(fields, dict):
            raise ConfigError(f"{path}: a search config is a mapping of SearchConfig fields.")
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return SearchConfig.parse(fields)


def _storage(args: argparse.Namespace) -> Any:
    from slimkit.search import open_storage

    return open_storage(args.storage, heartbeat_interval=args.heartbeat, grace_period=args.grace)


def run_space(args: argparse.Namespace) -> int:
    from slimkit.search import get_space

    config = _load_config(args.config)
    space = get_space(config.space, **config.space_options)
    summary = space.describe()
    summary["sample"] = space.sample(seed=args.seed).arch
    if args.json:
        print_json(summary)
        return 0
    from slimkit.search._step import arch_summary

    stdout.print(f"space {config.space}: {summary['size']:,} architectures")
    for name, choices in summary["decisions"].items():
        stdout.print(f"  {name:<16} {choices}")
    stdout.print(f"sample (seed {args.seed}): {arch_summary(summary['sample'])}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from slimkit.search import search

    config = _load_config(args.config, trials=args.trials)
    result = search(config)
    result.save(args.out)
    return _print_result(result, args)


def run_supernet(args: argparse.Namespace) -> int:
    from slimkit._runtime import num_threads
    from slimkit.data import DataConfig, load_dataset
    from slimkit.search import get_space, search_splits, train_supernet

    config = _load_config(args.config)
    space = get_space(config.space, **config.space_options)
    data = search_splits(load_dataset(DataConfig(name=config.data)), config)
    with num_threads(args.threads):
        net = train_supernet(space, data, config.supernet)
    net.save(args.out)
    big, small = net.summary["largest_accuracy"], net.summary["smallest_accuracy"]
    stdout.print(
        f"supernet trained: validation accuracy {big:.2%} (largest sub-network), "
        f"{small:.2%} (smallest); saved to {args.out}"
    )
    return 0


def run_create(args: argparse.Namespace) -> int:
    from slimkit.search import create_study

    config = _load_config(args.config)
    study = create_study(config, _storage(args), args.study, trials=args.trials)
    stdout.print(f"study {study.study_name!r} created with {args.trials or config.trials} trials; "
                 f"start workers with: slimkit search worker --storage {args.storage} "
                 f"--study {args.study}")  # fmt: skip
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from slimkit.search import run_worker as worker

    report = worker(_storage(args), args.study, workers=args.workers, threads=args.threads,
                    max_trials=args.max_trials)  # fmt: skip
    if args.json:
        print_json(asdict(report))
    else:
        stdout.print(f"worker done: {report.completed} trials completed, {report.failed} failed, "
                     f"{report.recovered} recovered from dead workers, {report.threads} "
                     f"thread(s), {report.seconds:.0f}s")  # fmt: skip
    return 0


def run_status(args: argparse.Namespace) -> int:
    from slimkit.search import study_progress, study_result

    storage = _storage(args)
    progress = study_progress(storage, args.study)
    result = study_result(storage, args.study)
    if args.out is not None and result.trials:
        result.save(args.out)
    if args.json:
        print_json({"progress": progress, **_summary(result)})
        return 0
    stdout.print(f"study {args.study!r}: {progress['slots_done']}/{progress['budget']} trials done "
                 f"({progress['states']})")  # fmt: skip
    if result.trials:
        _print_result(result, args)
    return 0


def _summary(result: Any) -> dict[str, Any]:
    from slimkit.search._step import arch_summary

    try:
        best = result.best
    except ConfigError:
        return {"best": None, "pareto_front": []}
    return {
        "best": {"trial": best.number, "metrics": best.metrics, "arch": best.arch,
                 "summary": arch_summary(best.arch)},
        "pareto_front": [{"trial": t.number, "metrics": t.metrics} for t in result.pareto_front()],
    }  # fmt: skip


def _print_result(result: Any, args: argparse.Namespace) -> int:
    summary = _summary(result)
    if getattr(args, "json", False):
        print_json({"seconds": result.seconds, "trials": len(result.trials), **summary})
        return 0
    best = summary["best"]
    if best is None:
        stdout.print("no feasible candidate")
        return 1
    shown = ", ".join(f"{k} {v:.4g}" for k, v in best["metrics"].items())
    stdout.print(f"best of {len(result.trials)} (trial {best['trial']}): {shown}")
    stdout.print(f"  {best['summary']}")
    stdout.print(f"Pareto front: {len(summary['pareto_front'])} candidates")
    out = getattr(args, "out", None)
    if out is not None:
        stdout.print(f"outputs in {out}/ (trials.json, pareto.png, model/)")
    return 0
