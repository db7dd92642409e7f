"""``slimkit train``: train a registered model on a registered data set and save it."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from slimkit.cli._common import add_json_flag, load_any_model, print_json, stdout


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model and save it (safetensors + model.json)")
    parser.add_argument(
        "--model", required=True, help="registered model name or saved model folder"
    )
    parser.add_argument("--data", default="fashion-mnist", help="registered data set")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig fields")
    parser.add_argument("--epochs", type=int, help="overrides the config's epochs")
    parser.add_argument("--lr", type=float, help="overrides the config's peak learning rate")
    parser.add_argument("--threads", type=int, help="torch threads while training")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to save the trained model in"
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.data import load_dataset
    from slimkit.models import list_models, model_info
    from slimkit.serialize import save_model
    from slimkit.train import TrainConfig, train

    # Without --config, a registered model trains with its reference recipe.
    if args.config:
        fields = yaml.safe_load(args.config.read_text())
    else:
        fields = model_info(args.model).train_defaults if args.model in list_models() else {}
    overrides = {"epochs": args.epochs, "lr": args.lr, "threads": args.threads}
    config = TrainConfig.parse(
        {**(fields or {}), **{k: v for k, v in overrides.items() if v is not None}}
    )
    model = load_any_model(args.model)
    result = train(model, config, load_dataset(args.data))
    save_model(result.model, args.out)
    summary = {"model": args.model, "out": str(args.out), "test_accuracy": result.test_accuracy,
               "seconds": result.seconds, "history": result.history}  # fmt: skip
    if args.json:
        print_json(summary)
    else:
        stdout.print(
            f"test accuracy {result.test_accuracy:.2%} after {result.seconds:.0f}s; "
            f"saved to {args.out}"
        )
    return 0
