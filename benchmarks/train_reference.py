"""Train the reference models on Fashion-MNIST and check the foundation's accuracy bars.

Bars (full run, this 2-core CPU): fmnist_resnet >= 93.0 % and fmnist_cnn >= 91.5 % test accuracy,
each trained in at most 10 minutes.

    python benchmarks/train_reference.py [--quick] [--out FILE]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _bench import emit, parse_args

from slimkit.data import DataConfig, load_dataset
from slimkit.models import create_model, model_info
from slimkit.serialize import save_model
from slimkit.train import TrainConfig, train

BARS = {"fmnist_resnet": 0.930, "fmnist_cnn": 0.915}
MAX_MINUTES = 10.0


def main() -> int:
    args = parse_args(__doc__)
    data = load_dataset(
        DataConfig(train_subset=2000, test_subset=1000) if args.quick else DataConfig()
    )
    rows, bars = [], []
    for name, target in BARS.items():
        # The registry's reference recipe, with both cores: the bar is wall-clock on this machine.
        config = TrainConfig(**{**model_info(name).train_defaults, "threads": os.cpu_count()})
        if args.quick:
            config = config.model_copy(update={"epochs": 1})
        cpu_start = time.process_time()
        result = train(create_model(name), config, data)
        cpu_minutes = (time.process_time() - cpu_start) / 60
        if not args.quick:
            # Later benchmarks (pruning, quantization, ...) start from these trained models.
            save_model(result.model, Path(".bench") / f"{name}_trained")
        minutes = result.seconds / 60
        accuracy = result.test_accuracy
        rows.append({"model": name, "epochs": len(result.history), "test_accuracy": accuracy,
                     "minutes": minutes, "cpu_minutes": cpu_minutes,
                     "threads": config.threads})  # fmt: skip
        bars.append({"bar": f"{name} accuracy", "target": f">= {target:.1%}",
                     "measured": accuracy, "met": accuracy >= target})  # fmt: skip
        bars.append({"bar": f"{name} training time", "target": f"<= {MAX_MINUTES} min",
                     "measured": minutes, "met": minutes <= MAX_MINUTES})  # fmt: skip
    return emit("train_reference", args, rows, bars)


if __name__ == "__main__":
    sys.exit(main())
