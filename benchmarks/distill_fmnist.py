"""Knowledge distillation on Fashion-MNIST: fmnist_tiny learns from a trained fmnist_resnet.

Bars (full run, this 2-core CPU), every comparison at the same training budget (same optimizer
steps, learning rate and schedule):
  (a) full training set: KD beats labels alone by >= 0.5 point on the mean of 3 seeds;
  (b) 5 % of the labels (the teacher sees every image; unlabeled images get the soft targets
      alone): KD beats labels alone by >= 2 points on each of 3 seeds;
  (c) fmnist_resnet pruned to 30 % of its MACs: fine-tuning with KD from the unpruned model
      recovers at least as much accuracy as fine-tuning on labels (mean of 3 seeds);
  (d) ``torchrun --nproc_per_node=2`` (1 thread per process) runs the KD jobs of (a) and
      reaches the one-process accuracy within 0.3 point (mean of the 3 seeds: at 2 epochs a
      single run moves by a few tenths of a point with the order of the batches).
The student has at most 1/10 of the teacher's parameters. The teacher's logits on the training
set are computed once and shared by every KD run (and by the torchrun workers).

    python benchmarks/distill_fmnist.py [--quick] [--out FILE] [--trained FOLDER]

The teacher is fmnist_resnet trained as its reference training but **without label smoothing**:
a teacher trained with label smoothing makes its wrong classes nearly equally likely, which
erases the similarities between classes that its soft targets should carry (Mueller, Kornblith
and Hinton, "When does label smoothing help?", 2019). Measured here, all labels, 2 epochs: with
the label-smoothed reference teacher KD gained 0-0.2 point over labels alone, with the same
network trained without label smoothing about a point (see KD_FULL). ``--trained`` is such a
teacher saved with slimkit.serialize.save_model; without it the teacher is trained first (about
8 minutes more) and saved to ``.bench/fmnist_resnet_kd_teacher``.

The full run trains 12 students and 6 pruned ResNets for 2 epochs each plus 3 torchrun jobs:
about 20 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import torch
from _bench import emit, parse_args
from torch import Tensor, nn

from slimkit._runtime import num_threads
from slimkit.data import DataConfig, DataSplits, load_dataset
from slimkit.distill import IGNORE_INDEX, DistillConfig, distill, teacher_outputs
from slimkit.measure import count_macs, count_params
from slimkit.models import create_model, model_info
from slimkit.prune import StructuredConfig, prune
from slimkit.serialize import load_model, save_model
from slimkit.train import TrainConfig, train

TEACHER, STUDENT = "fmnist_resnet", "fmnist_tiny"
SEEDS = (0, 1, 2)
EPOCHS = {"full": 2, "few_labels": 2, "pruned": 2}
LABEL_FRACTION = 0.05
# Measured here (1 thread, 2 epochs) with the teacher trained without label smoothing, all
# labels, gain over labels alone in points for seeds 0/1/2: T = 2 / alpha 1.0 (soft targets
# alone) +1.27/+1.07/+1.15; T = 3 / 0.9 +0.58/+0.98/+1.10; T = 2 / 0.9 +0.82/-0.01 (seeds 0-1);
# T = 4 / 0.9 -0.09 and T = 1 / 0.9 +0.18 (seed 0). Single runs differ by up to a point between
# near-identical settings at this budget: the bars are on means or on margins above that.
# Pruned to 30 % MACs, seeds 0/1: T = 2 / 1.0 +0.06/+0.19, T = 1 / 0.9 -0.03/+0.20. With the
# label-smoothed reference teacher: 5 % labels: T = 1 / 0.9 +3.6 points, T = 2 / 0.7 +2.0.
KD_FULL = {"temperature": 2.0, "alpha": 1.0}
KD_FEW_LABELS = {"temperature": 2.0, "alpha": 0.9}
KD_PRUNED = {"temperature": 2.0, "alpha": 1.0}
MACS_KEEP = 0.3
MIN_GAIN = {"full": 0.005, "few_labels": 0.02, "pruned": 0.0}
MAX_DDP_GAP = 0.003
MAX_PARAM_RATIO = 0.1
DDP_WORKER = Path(__file__).with_name("_distill_ddp.py")
KD_TEACHER = Path(".bench/fmnist_resnet_kd_teacher")


def main() -> int:
    args = parse_args(__doc__, trained=True)
    threads = os.cpu_count() or 1
    quick = args.quick
    data = load_dataset(_data_config(quick))
    teacher = _teacher(args, data, threads)
    rows: list[dict[str, Any]] = []
    bars = [_param_bar(teacher)]
    with num_threads(threads):
        start = time.perf_counter()
        logits = teacher_outputs(teacher, data.train_inputs)
        print(f"teacher logits on {len(logits)} images: {time.perf_counter() - start:.0f} s")
    seeds = SEEDS[:1] if quick else SEEDS
    kd_accs = _full_set(data, teacher, logits, seeds, threads, quick, rows, bars)
    _few_labels(data, teacher, logits, seeds, threads, quick, rows, bars)
    _pruned(data, teacher, logits, seeds, threads, quick, rows, bars)
    _ddp(data, teacher, logits, seeds, kd_accs, quick, rows, bars)
    return emit("distill_fmnist", args, rows, bars)


def _train_config(part: str, seed: int, threads: int, quick: bool, **extra: Any) -> TrainConfig:
    epochs = 1 if quick else EPOCHS[part]
    return TrainConfig(epochs=epochs, lr=0.1, augment=False, seed=seed, threads=threads, **extra)


def _student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(STUDENT)


def _kd_accuracy(student: nn.Module, teacher: nn.Module, data: DataSplits, cfg: DistillConfig,
                 logits: Tensor) -> float:  # fmt: skip
    history: list[dict[str, float]] = []
    distill(student, teacher, data, cfg, teacher_logits=logits, history=history)
    return history[-1]["test_accuracy"]


def _full_set(data: DataSplits, teacher: nn.Module, logits: Tensor, seeds: tuple[int, ...],
              threads: int, quick: bool, rows: list[dict[str, Any]],
              bars: list[dict[str, Any]]) -> list[float]:  # fmt: skip
    """(a) Every label: KD against labels alone, same TrainConfig."""
    gains, kd_accs = [], []
    for seed in seeds:
        start = time.perf_counter()
        tc = _train_config("full", seed, threads, quick)
        labels_acc = train(_student(seed), tc, data).test_accuracy
        kd_acc = _kd_accuracy(_student(seed), teacher, data, DistillConfig(**KD_FULL, train=tc),
                              logits)  # fmt: skip
        kd_accs.append(kd_acc)
        gains.append(kd_acc - labels_acc)
        rows.append(_row("a all labels", seed, "labels", labels_acc, "KD", kd_acc, tc, start))
    mean = sum(gains) / len(gains)
    bars.append({"bar": f"a: KD - labels, all labels, mean of {len(seeds)} seeds (pt)",
                 "target": f">= {MIN_GAIN['full'] * 100}", "measured": mean * 100,
                 "met": mean >= MIN_GAIN["full"]})  # fmt: skip
    return kd_accs


def _few_labels(data: DataSplits, teacher: nn.Module, logits: Tensor, seeds: tuple[int, ...],
                threads: int, quick: bool, rows: list[dict[str, Any]],
                bars: list[dict[str, Any]]) -> None:  # fmt: skip
    """(b) 5 % of the labels. KD: every image, the unlabeled ones with soft targets alone.
    Labels alone: the labeled images only, repeated so that an epoch has as many steps."""
    for seed in seeds:
        start = time.perf_counter()
        labeled = torch.randperm(len(data.train_labels), generator=_gen(seed))
        labeled = labeled[: round(LABEL_FRACTION * len(labeled))]
        hidden = torch.full_like(data.train_labels, IGNORE_INDEX)
        hidden[labeled] = data.train_labels[labeled]
        partial = dataclasses.replace(data, train_labels=hidden)
        repeats = len(data.train_labels) // len(labeled)
        only_labeled = dataclasses.replace(
            data, train_inputs=data.train_inputs[labeled].repeat(repeats, 1, 1, 1),
            train_labels=data.train_labels[labeled].repeat(repeats),
        )  # fmt: skip
        tc = _train_config("few_labels", seed, threads, quick)
        labels_acc = train(_student(seed), tc, only_labeled).test_accuracy
        cfg = DistillConfig(**KD_FEW_LABELS, train=tc)
        kd_acc = _kd_accuracy(_student(seed), teacher, partial, cfg, logits)
        rows.append(_row("b 5% labels", seed, "labels", labels_acc, "KD", kd_acc, tc, start))
        gain = kd_acc - labels_acc
        bars.append({"bar": f"b: KD - labels, 5 % labels, seed {seed} (pt)",
                     "target": f">= {MIN_GAIN['few_labels'] * 100}", "measured": gain * 100,
                     "met": gain >= MIN_GAIN["few_labels"]})  # fmt: skip


def _pruned(data: DataSplits, teacher: nn.Module, logits: Tensor, seeds: tuple[int, ...],
            threads: int, quick: bool, rows: list[dict[str, Any]],
            bars: list[dict[str, Any]]) -> None:  # fmt: skip
    """(c) The teacher pruned to 30 % of its MACs, fine-tuned on labels or with KD from itself.

    Compared on the mean of the seeds: single fine-tuning runs differ by a few tenths of a point.
    """
    config = StructuredConfig(importance="l2", target="macs", keep=MACS_KEEP, round_to=8)
    with num_threads(threads):
        pruned = prune(teacher, config, data.example_input(1), data=data)
    example = data.example_input(1)
    macs = count_macs(pruned, example).macs / count_macs(teacher, example).macs
    bars.append({"bar": "c: MACs kept after pruning", "target": f"<= {MACS_KEEP}",
                 "measured": macs, "met": macs <= MACS_KEEP + 1e-9})  # fmt: skip
    gains = []
    for seed in seeds:
        start = time.perf_counter()
        # As the reference training and prune_fmnist: label smoothing 0.1, no augmentation.
        tc = _train_config("pruned", seed, threads, quick, label_smoothing=0.1).model_copy(
            update={"lr": 0.05}
        )
        labels_acc = train(pruned, tc, data).test_accuracy
        cfg = DistillConfig(**KD_PRUNED, train=tc)
        kd_acc = _kd_accuracy(pruned, teacher, data, cfg, logits)
        gains.append(kd_acc - labels_acc)
        rows.append(_row(f"c pruned {macs:.0%} MACs", seed, "labels FT", labels_acc, "KD FT",
                         kd_acc, tc, start))  # fmt: skip
    mean = sum(gains) / len(gains)
    bars.append({"bar": f"c: KD - label fine-tuning after pruning, mean of {len(seeds)} (pt)",
                 "target": ">= 0", "measured": mean * 100, "met": mean >= 0})  # fmt: skip


def _ddp(data: DataSplits, teacher: nn.Module, logits: Tensor, seeds: tuple[int, ...],
         kd_accs: list[float], quick: bool, rows: list[dict[str, Any]],
         bars: list[dict[str, Any]]) -> None:  # fmt: skip
    """(d) The KD jobs of (a) in two processes launched by torchrun, one per seed.

    Two processes see the batches in another order than one, which at this budget moves a
    single run by a few tenths of a point either way (as another seed does); the bar compares
    the means over the seeds.
    """
    tc = _train_config("full", 0, os.cpu_count() or 1, quick)
    ddp_accs, threads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(teacher, Path(tmp) / "teacher")
        torch.save(logits, Path(tmp) / "logits.pt")
        for seed, kd_acc in zip(seeds, kd_accs, strict=True):
            start = time.perf_counter()
            result = _torchrun_job(Path(tmp), folder, seed, tc, quick)
            ddp_accs.append(result["history"][-1]["test_accuracy"])
            threads.append(result["threads"])
            row = _row("d torchrun", seed, "KD 1 proc", kd_acc, "KD 2 procs", ddp_accs[-1], tc,
                       start)  # fmt: skip
            row["candidate"] += f" x{result['threads']} thr"
            rows.append(row)
    gap = abs(sum(ddp_accs) - sum(kd_accs)) / len(seeds)
    bars.append({"bar": f"d: |KD torchrun x2 - KD 1 process|, mean of {len(seeds)} (pt)",
                 "target": f"<= {MAX_DDP_GAP * 100}", "measured": gap * 100,
                 "met": gap <= MAX_DDP_GAP})  # fmt: skip
    limit = max(1, (os.cpu_count() or 1) // 2)
    bars.append({"bar": "d: threads per process (2 processes)", "target": f"<= {limit}",
                 "measured": max(threads), "met": max(threads) <= limit})  # fmt: skip


def _torchrun_job(tmp: Path, teacher: Path, seed: int, tc: TrainConfig,
                  quick: bool) -> dict[str, Any]:  # fmt: skip
    job = {
        "teacher": str(teacher),
        "logits": str(tmp / "logits.pt"),
        "data": _data_config(quick).model_dump(mode="json"),
        "student": STUDENT,
        "seed": seed,
        "distill": DistillConfig(**KD_FULL, train=tc.model_copy(update={"seed": seed})).model_dump(
            mode="json"
        ),
        "out": str(tmp / "result.json"),
    }
    (tmp / "job.json").write_text(json.dumps(job))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(DDP_WORKER), str(tmp / "job.json")]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "SLIMKIT_PROGRESS": "0"})
    return json.loads((tmp / "result.json").read_text())


def _row(part: str, seed: int, baseline: str, baseline_acc: float, candidate: str,
         candidate_acc: float, tc: TrainConfig, start: float) -> dict[str, Any]:  # fmt: skip
    return {"part": part, "seed": seed, "baseline": baseline, "acc": baseline_acc,
            "candidate": candidate, "cand_acc": candidate_acc,
            "diff_pt": (candidate_acc - baseline_acc) * 100, "epochs": tc.epochs,
            "min": (time.perf_counter() - start) / 60}  # fmt: skip


def _param_bar(teacher: nn.Module) -> dict[str, Any]:
    ratio = count_params(create_model(STUDENT))[0] / count_params(teacher)[0]
    return {"bar": "student params / teacher params", "target": f"<= {MAX_PARAM_RATIO}",
            "measured": ratio, "met": ratio <= MAX_PARAM_RATIO}  # fmt: skip


def _teacher(args: argparse.Namespace, data: DataSplits, threads: int) -> nn.Module:
    if args.trained is not None:
        return load_model(args.trained)
    defaults = model_info(TEACHER).train_defaults
    quick = {"epochs": 1} if args.quick else {}
    config = TrainConfig(**{**defaults, "label_smoothing": 0.0, "threads": threads, **quick})
    model = train(create_model(TEACHER), config, data).model
    if not args.quick:
        save_model(model, KD_TEACHER)
    return model


def _data_config(quick: bool) -> DataConfig:
    return DataConfig(train_subset=2000, test_subset=1000) if quick else DataConfig()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(10_000 + seed)


if __name__ == "__main__":
    sys.exit(main())
