"""Structured pruning on real data: fmnist_resnet at <= 50 % of its MACs, fine-tuned.

Bars (full run): after pruning to at most 50 % of the MACs and at most 3 epochs of fine-tuning,
Fashion-MNIST test accuracy drops by at most 0.5 point, and the pruned model is at least 1.5x
faster at batch 64 than the unpruned one, timed interleaved in the same run (one thread).

    python benchmarks/prune_fmnist.py [--quick] [--out FILE] [--trained runs/x/model]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _bench import emit, parse_args, trained_resnet

from slimkit.data import DataConfig, load_dataset
from slimkit.measure import ProfileConfig, compare
from slimkit.prune import StructuredConfig, prune
from slimkit.train import TrainConfig, train

MACS_KEEP = 0.5
MAX_DROP = 0.005
MIN_SPEEDUP = 1.5
FINETUNE_EPOCHS = 3


def main() -> int:
    args = parse_args(__doc__, trained=True)
    threads = os.cpu_count()
    subset = DataConfig(train_subset=2000, test_subset=1000)
    data = load_dataset(subset if args.quick else DataConfig())
    dense = trained_resnet(args, data, threads)
    rows, bars = [], []
    for importance in ("l2",) if args.quick else ("l2", "taylor"):
        config = StructuredConfig(importance=importance, target="macs", keep=MACS_KEEP, round_to=8)
        pruned = prune(dense, config, data.example_input(1), data=data)
        epochs = 1 if args.quick else FINETUNE_EPOCHS
        # As the reference training: no augmentation, label smoothing (see RESNET_TRAINING).
        finetune = TrainConfig(
            epochs=epochs, lr=0.05, label_smoothing=0.1, augment=False, threads=threads
        )
        tuned = train(pruned, finetune, data).model
        result = compare(dense, tuned, data.example_input(1), config=_timing(args.quick), data=data)
        r = result.ratios()
        drop = result.baseline.accuracy - result.candidate.accuracy
        rows.append({
            "importance": importance, "dense_acc": result.baseline.accuracy,
            "pruned_acc": result.candidate.accuracy, "drop_pt": drop * 100,
            "macs_ratio": r["macs_ratio"], "params_ratio": r["params_ratio"],
            "speedup_b64": r["throughput_speedup"], "speedup_b1": r["latency_speedup"],
        })  # fmt: skip
        bars += [
            {"bar": f"{importance}: MACs kept", "target": f"<= {MACS_KEEP}",
             "measured": r["macs_ratio"], "met": r["macs_ratio"] <= MACS_KEEP},
            {"bar": f"{importance}: accuracy drop (pt)", "target": f"<= {MAX_DROP * 100}",
             "measured": drop * 100, "met": drop <= MAX_DROP},
            {"bar": f"{importance}: speed-up at batch 64", "target": f">= {MIN_SPEEDUP}",
             "measured": r["throughput_speedup"], "met": r["throughput_speedup"] >= MIN_SPEEDUP},
        ]  # fmt: skip
    return emit("prune_fmnist", args, rows, bars)


def _timing(quick: bool) -> ProfileConfig:
    # One thread, as deployed per request; interleaved blocks make the ratio robust to load.
    return ProfileConfig(threads=1, memory=False, max_seconds=0.3 if quick else 3.0)


if __name__ == "__main__":
    sys.exit(main())
