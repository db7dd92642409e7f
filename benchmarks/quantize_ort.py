"""int8 in ONNX Runtime, the format chosen by measurement: fmnist_resnet and all-MiniLM-L6-v2.

Each model is exported to fp32 ONNX, several int8 variants are built with ONNX Runtime's
quantization tools (static QDQ U8S8 / S8S8, QOperator, dynamic; MatMul-only and all-op static
for the transformer), and every variant is timed against ONNX Runtime fp32 in the same run
(interleaved blocks, one thread) and checked against the fp32 outputs. The table shows every
candidate; the chosen one is the fastest whose fidelity passes.

Bars (full run), for the chosen candidate:
- fmnist_resnet: Fashion-MNIST test accuracy (all 10,000 images) at most 0.3 point below ONNX
  Runtime fp32, file at most 0.27x the fp32 file, throughput at batch 64 at least 2x ONNX Runtime
  fp32 (batch 1 reported).
- all-MiniLM-L6-v2, sequence 128: mean embedding cosine to fp32 at least 0.99 on 512 real
  sentences, at least 1.8x the speed of ONNX Runtime fp32 at batch 1 and at batch 32.

Also measured (no bar): a recurrent model, ``fmnist_rnn`` (an LSTM reading the image's 28 rows),
trained here, with the transformer set of candidates: dynamic int8 turns its LSTM into
``DynamicQuantizeLSTM``; accuracy, size and speed against fp32 ONNX Runtime.

``--quick`` trains one short epoch on 2,000 images, evaluates on 1,000 test images and 16 sentences,
tries only dynamic int8 for MiniLM and times one call per round at batch 4 for MiniLM.

    python benchmarks/quantize_ort.py [--quick] [--out FILE] [--trained runs/x/model]
        [--parts resnet,minilm,lstm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import torch
from _bench import emit, parse_args, trained_resnet
from rich.console import Console
from torch import Tensor

from slimkit.compile._onnx import export_onnx
from slimkit.data import DataConfig, load_dataset, text_samples
from slimkit.measure import ProfileConfig
from slimkit.models import create_model
from slimkit.models._minilm import MINILM_SEQ, tokenize
from slimkit.quantize._lowering import (
    Int8Selection,
    default_int8_candidates,
    int8_candidates,
)
from slimkit.train import TrainConfig, train

MAX_DROP = 0.003
MAX_SIZE = 0.27
MIN_SPEEDUP_CNN = 2.0
MIN_COSINE = 0.99
MIN_SPEEDUP_MINILM = 1.8
MINILM_SENTENCES = 512

# Quick: one epoch at a smaller step and batch, which reaches about 70 % on 2,000 images.
QUICK_TRAINING = {"epochs": 1, "lr": 0.05, "batch_size": 64}


def main() -> int:
    args = parse_args(__doc__, trained=True, parts=("resnet", "minilm", "lstm"))
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    bars: list[dict[str, Any]] = []
    parts = {"resnet": _resnet, "minilm": _minilm, "lstm": _lstm}
    with tempfile.TemporaryDirectory(prefix="slimkit-quantize-ort-") as tmp:
        for part in (fn for name, fn in parts.items() if name in args.parts):
            r, b = part(args, Path(tmp))
            rows += r
            bars += b
    return emit("quantize_ort", args, rows, bars)


def _resnet(args: argparse.Namespace, work: Path) -> tuple[list[dict], list[dict]]:
    subset = DataConfig(train_subset=2000, test_subset=1000)
    data = load_dataset(subset if args.quick else DataConfig())
    model = trained_resnet(args, data, os.cpu_count(), QUICK_TRAINING).eval()
    fp32 = export_onnx(model, data.example_input(8), work / "resnet.onnx")
    labels = data.test_labels

    def accuracy_delta(reference: Tensor, output: Tensor) -> float:
        return _accuracy(output, labels) - _accuracy(reference, labels)

    timing = _timing(args.quick, throughput_batch=64, max_seconds=2.0)
    selection = int8_candidates(
        fp32, data.calibration_inputs(128 if args.quick else 512), data.test_inputs,
        work / "resnet-int8", fidelity=accuracy_delta, min_fidelity=-MAX_DROP, timing=timing,
    )  # fmt: skip
    Console(width=160).print(selection.to_table())
    # The fp32 accuracy, computed once, turns each candidate's delta back into an accuracy.
    with torch.inference_mode():
        fp32_acc = _accuracy(torch.cat([model(x) for x in data.test_inputs.split(500)]), labels)
    rows = _rows("fmnist_resnet", selection, accuracy=fp32_acc)
    best = selection.best
    drop = -best.fidelity if best else float("nan")
    size = best.size_ratio if best else float("nan")
    speed = best.throughput_speedup if best else float("nan")
    bars = [
        {"bar": "resnet int8: accuracy drop (pt)", "target": f"<= {MAX_DROP * 100}",
         "measured": drop * 100, "met": best is not None and drop <= MAX_DROP},
        {"bar": "resnet int8: file vs fp32", "target": f"<= {MAX_SIZE}",
         "measured": size, "met": best is not None and size <= MAX_SIZE},
        {"bar": "resnet int8: throughput vs ORT fp32 (b64)", "target": f">= {MIN_SPEEDUP_CNN}",
         "measured": speed, "met": best is not None and speed >= MIN_SPEEDUP_CNN},
    ]  # fmt: skip
    return rows, bars


def _minilm(args: argparse.Namespace, work: Path) -> tuple[list[dict], list[dict]]:
    model = create_model("all_minilm_l6_v2").eval()
    n_eval = 16 if args.quick else MINILM_SENTENCES
    n_calib = 8 if args.quick else 128
    ids = tokenize(text_samples(n_eval + n_calib), MINILM_SEQ)
    evaluation, calibration = ids[:n_eval], ids[n_eval:]
    fp32 = export_onnx(model, evaluation[:2], work / "minilm.onnx")
    candidates = default_int8_candidates(fp32)
    if args.quick:  # static calibration of a transformer takes 10-20 s per candidate
        candidates = [c for c in candidates if c.name == "dynamic-pc"]
    # Quick: batch 4, as a batch of 32 takes about a second per call in fp32.
    timing = _timing(args.quick, throughput_batch=4 if args.quick else 32, max_seconds=3.0)
    selection = int8_candidates(
        fp32, calibration, evaluation, work / "minilm-int8", candidates=candidates,
        fidelity="cosine", min_fidelity=MIN_COSINE, timing=timing,
    )  # fmt: skip
    Console(width=160).print(selection.to_table())
    rows = _rows("all_minilm_l6_v2", selection)
    best = selection.best
    cos = best.fidelity if best else float("nan")
    b1 = best.latency_speedup if best else float("nan")
    big = best.throughput_speedup if best else float("nan")
    batch = timing.throughput_batch
    bars = [
        {"bar": f"minilm int8: mean cosine ({n_eval} sentences)", "target": f">= {MIN_COSINE}",
         "measured": cos, "met": best is not None and cos >= MIN_COSINE},
        {"bar": "minilm int8: speed vs ORT fp32 (b1)", "target": f">= {MIN_SPEEDUP_MINILM}",
         "measured": b1, "met": best is not None and b1 >= MIN_SPEEDUP_MINILM},
        {"bar": f"minilm int8: speed vs ORT fp32 (b{batch})", "target": f">= {MIN_SPEEDUP_MINILM}",
         "measured": big, "met": best is not None and big >= MIN_SPEEDUP_MINILM},
    ]  # fmt: skip
    return rows, bars


def _lstm(args: argparse.Namespace, work: Path) -> tuple[list[dict], list[dict]]:
    subset = DataConfig(train_subset=2000, test_subset=1000)
    data = load_dataset(subset if args.quick else DataConfig(train_subset=20000))
    config = TrainConfig(epochs=1 if args.quick else 3, lr=0.01, optimizer="adamw",
                         batch_size=64, threads=os.cpu_count(), augment=False)  # fmt: skip
    model = train(create_model("fmnist_rnn"), config, data).model.eval()
    fp32 = export_onnx(model, data.example_input(8), work / "lstm.onnx")
    labels = data.test_labels

    def accuracy_delta(reference: Tensor, output: Tensor) -> float:
        return _accuracy(output, labels) - _accuracy(reference, labels)

    selection = int8_candidates(
        fp32, data.calibration_inputs(128), data.test_inputs, work / "lstm-int8",
        fidelity=accuracy_delta, min_fidelity=-MAX_DROP,
        timing=_timing(args.quick, throughput_batch=64, max_seconds=2.0),
    )  # fmt: skip
    Console(width=160).print(selection.to_table())
    with torch.inference_mode():
        fp32_acc = _accuracy(model(data.test_inputs), labels)
    return _rows("fmnist_rnn (lstm)", selection, accuracy=fp32_acc), []


def _timing(quick: bool, *, throughput_batch: int, max_seconds: float) -> ProfileConfig:
    # One ONNX Runtime thread, as deployed per request; interleaved blocks make ratios robust.
    if quick:  # one call per runner per round: a smoke run, not a measurement
        return ProfileConfig(threads=1, throughput_batch=throughput_batch, warmup=1,
                             min_runs=10, max_seconds=0.05, memory=False, energy=False)  # fmt: skip
    return ProfileConfig(threads=1, throughput_batch=throughput_batch, max_seconds=max_seconds,
                         memory=False, energy=False)  # fmt: skip


def _rows(
    model: str, selection: Int8Selection, accuracy: float | None = None
) -> list[dict[str, Any]]:
    rows = []
    for row in [selection.baseline, *selection.rows]:
        chosen = selection.best is not None and row.name == selection.best.name
        # The same keys for both models, so that one table holds them.
        if accuracy is not None:  # the fidelity is the accuracy delta vs fp32
            metric, value = "accuracy", None if row.fidelity is None else accuracy + row.fidelity
        else:
            metric, value = "cosine", row.fidelity
        entry = {
            "model": model, "candidate": row.name + (" *" if chosen else ""), "metric": metric,
            "value": value, "size_ratio": row.size_ratio, "speedup_b1": row.latency_speedup,
            "batch": selection.throughput_batch, "speedup_batch": row.throughput_speedup,
            "p50_ms_b1": row.latency_p50_ms, "passed": row.passed, "note": row.note,
        }  # fmt: skip
        rows.append(entry)
    return rows


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())


if __name__ == "__main__":
    sys.exit(main())
