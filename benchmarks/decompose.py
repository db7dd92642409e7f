"""Tensor decomposition: one big conv, fmnist_resnet at half its MACs, MiniLM's FFN layers.

Bars (full run), every speed-up a ratio measured in the same run, timed interleaved, one thread:
(a) one 3x3 conv, 256 -> 256 channels at 28x28, batch 1: Tucker-2 at a 4x MAC cut at least 2.5x
    faster in PyTorch eager, CP at a 4x MAC cut at least 2x faster;
(b) fmnist_resnet decomposed to at most 50 % of its MACs (global budget, data-aware, speed gate)
    and fine-tuned 3 epochs (no augmentation, label smoothing 0.1, as the reference training)
    loses at most 1 point of test accuracy and is faster: at least 1.1x at batch 64, above 1x
    at batch 1 (where the extra layers' eager overhead eats most of the gain);
(c) all-MiniLM-L6-v2's FFN layers by SVD at half their parameters: data-aware (whitened by
    real sentences' activations) keeps a higher embedding cosine to the original than plain
    SVD at the same ranks; the speed-up at sequence length 128 is reported.

    python benchmarks/decompose.py [--quick] [--out FILE] [--trained .bench/fmnist_resnet_trained]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import torch
from _bench import emit, parse_args, trained_resnet
from torch import nn

from slimkit.data import DataConfig, load_dataset, text_samples
from slimkit.decompose import DecomposeConfig, decompose, decomposition_report
from slimkit.measure import ProfileConfig, compare, time_interleaved
from slimkit.models import create_model
from slimkit.train import TrainConfig, train

MIN_TUCKER = 2.5
MIN_CP = 2.0
MACS_KEEP = 0.5
MAX_DROP = 0.01
MIN_B1_SPEEDUP = 1.0  # measured 1.02-1.05 (eager overhead of the extra layers at batch 1)
MIN_B64_SPEEDUP = 1.1  # measured 1.13-1.15
FINETUNE_EPOCHS = 3
FFN = ("encoder.encoder.layer.?.intermediate.dense", "encoder.encoder.layer.?.output.dense")


def main() -> int:
    args = parse_args(__doc__, trained=True)
    rows: list[dict[str, Any]] = []
    bars: list[dict[str, Any]] = []
    for part in (_single_conv, _fmnist_resnet, _minilm_ffn):
        part_rows, part_bars = part(args)
        rows += part_rows
        bars += part_bars
    return emit("decompose", args, rows, bars)


def _row(
    part: str,
    variant: str,
    rank: Any,
    macs_ratio: Any,
    metric: str,
    value: float,
    speedup_b1: float,
    speedup_batch: float | None,
) -> dict[str, Any]:
    """One table row; every part fills the same columns (``value`` is what ``metric`` names)."""
    return {"part": part, "variant": variant, "rank": rank, "macs_ratio": macs_ratio,
            "metric": metric, "value": value, "speedup_b1": speedup_b1,
            "speedup_batch": speedup_batch}  # fmt: skip


def _bar(name: str, target: str, measured: float, met: bool) -> dict[str, Any]:
    return {"bar": name, "target": target, "measured": measured, "met": met}


def _timing(quick: bool, batch: int) -> ProfileConfig:
    # One thread, as deployed per request; compare() interleaves the two models' timings.
    if quick:  # a smoke run: few runs at small batches
        return ProfileConfig(threads=1, throughput_batch=4, memory=False, max_seconds=0.2,
                             warmup=2, min_runs=3)  # fmt: skip
    return ProfileConfig(threads=1, throughput_batch=batch, memory=False, max_seconds=3.0)


def _single_conv(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    conv = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1)).eval()
    x = torch.randn(1, 256, 28, 28)
    # Both at 1/4 of the MACs (the default layer_macs_ratio), no gate: this measures the bars.
    tucker = decompose(conv, DecomposeConfig(method="tucker2", speed_gate=False), x)
    # CP is kept even when degenerate here: this part measures the four-conv structure's speed.
    cp_config = DecomposeConfig(method="cp", speed_gate=False, cp_on_degenerate="warn",
                                cp_iterations=5 if args.quick else 40)  # fmt: skip
    cp = decompose(conv, cp_config, x)
    with torch.inference_mode():
        seconds = 0.5 if args.quick else 4.0
        timings = time_interleaved(
            [conv, tucker, cp], x, warmup=5, min_runs=20, max_seconds=seconds, rounds=6
        )
    base = timings[0].stats.p50_ms
    rows, bars = [], []
    variants = (("tucker2", tucker, MIN_TUCKER), ("cp", cp, MIN_CP))
    for (name, model, least), timing in zip(variants, timings[1:], strict=True):
        [layer] = decomposition_report(model)["layers"]
        speedup = base / timing.stats.p50_ms
        rows.append(_row("conv 256->256 3x3 @28x28", name, layer["rank"], layer["macs_ratio"],
                         "weight error", layer["weight_error"], speedup, None))  # fmt: skip
        bars.append(_bar(f"conv: {name} at a 4x MAC cut, speed-up b1", f">= {least}", speedup,
                         speedup >= least))  # fmt: skip
    return rows, bars


def _fmnist_resnet(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    threads = os.cpu_count() or 1
    subset = DataConfig(train_subset=2000, test_subset=1000)
    data = load_dataset(subset if args.quick else DataConfig())
    dense = trained_resnet(args, data, threads)
    config = DecomposeConfig(target_macs=MACS_KEEP, gate_seconds=0.1 if args.quick else 0.3)
    small = decompose(dense, config, data.example_input(1), calib=data)
    kept = sum(1 for x in decomposition_report(small)["layers"] if x["kept"])
    # As the reference training: no augmentation, label smoothing (see RESNET_TRAINING).
    finetune = TrainConfig(epochs=1 if args.quick else FINETUNE_EPOCHS, lr=0.05,
                           label_smoothing=0.1, augment=False, threads=threads)  # fmt: skip
    tuned = train(small, finetune, data).model
    timing = _timing(args.quick, batch=64)
    result = compare(dense, tuned, data.example_input(1), config=timing, data=data)
    r = result.ratios()
    drop = result.baseline.accuracy - result.candidate.accuracy
    variant = (f"{kept} layers factorized; accuracy {result.baseline.accuracy:.2%} -> "
               f"{result.candidate.accuracy:.2%}")  # fmt: skip
    rows = [_row("fmnist_resnet (b64)", variant, None, r["macs_ratio"], "accuracy drop (pt)",
                 drop * 100, r["latency_speedup"], r["throughput_speedup"])]  # fmt: skip
    b1, b64 = r["latency_speedup"], r["throughput_speedup"]
    bars = [
        _bar("fmnist_resnet: MACs kept", f"<= {MACS_KEEP}", r["macs_ratio"],
             r["macs_ratio"] <= MACS_KEEP),
        _bar("fmnist_resnet: accuracy drop (pt)", f"<= {MAX_DROP * 100}", drop * 100,
             drop <= MAX_DROP),
        _bar("fmnist_resnet: speed-up b1", f"> {MIN_B1_SPEEDUP}", b1, b1 > MIN_B1_SPEEDUP),
        _bar("fmnist_resnet: speed-up b64", f">= {MIN_B64_SPEEDUP}", b64,
             b64 >= MIN_B64_SPEEDUP),
    ]  # fmt: skip
    return rows, bars


def _minilm_ffn(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    from slimkit.models._minilm import MINILM_SEQ, tokenize

    torch.set_num_threads(1)
    model = create_model("all_minilm_l6_v2").eval()
    n_calib, n_eval = (16, 32) if args.quick else (128, 256)
    ids = tokenize(text_samples(n_calib + n_eval), MINILM_SEQ)
    calib, held_out = ids[:n_calib], ids[n_calib:]  # the cosine is on sentences not calibrated on
    with torch.no_grad():
        reference = model(held_out)
    variants = {}
    for aware in (False, True):
        # Half of each FFN layer's parameters (MACs and parameters are proportional for a
        # Linear); no speed gate, so both variants have the same ranks everywhere.
        config = DecomposeConfig(layers=FFN, method="svd", layer_macs_ratio=0.5, data_aware=aware,
                                 speed_gate=False, calibration_batch_size=16)  # fmt: skip
        variants[aware] = decompose(model, config, ids[:1], calib=calib)
    cosines = {}
    with torch.no_grad():
        for aware, small in variants.items():
            cosines[aware] = float((small(held_out) * reference).sum(-1).mean())  # unit vectors
    # Same structure, same speed: the data-aware model is timed.
    r = compare(model, variants[True], ids[:1], config=_timing(args.quick, batch=32)).ratios()
    ranks = sorted({x["rank"][0] for x in decomposition_report(variants[True])["layers"]})
    rows = [_row("all-MiniLM-L6-v2 FFN (b32)", "data-aware SVD" if aware else "plain SVD",
                 ranks, r["macs_ratio"], "embedding cosine", cosine, r["latency_speedup"],
                 r["throughput_speedup"]) for aware, cosine in cosines.items()]  # fmt: skip
    bars = [_bar("MiniLM FFN: data-aware cosine > plain SVD cosine", f"> {cosines[False]:.4f}",
                 cosines[True], cosines[True] > cosines[False])]  # fmt: skip
    return rows, bars


if __name__ == "__main__":
    sys.exit(main())
