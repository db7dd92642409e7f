"""How many torchvision classifiers structured pruning handles with no per-model code.

Every classifier in ``torchvision.models`` (random weights, batch 1 at 224x224, inception_v3 at its
native 299) is pruned to 50 % of its removable channels with L2 importance ranked globally, through
the public API (:func:`slimkit.prune.prune`). A model passes when the pruned copy runs, keeps the
output shape, has fewer parameters and MACs, and equals the same model with the same channels
zeroed instead of removed: max abs diff <= 1e-4. That equality is what proves the channel groups
are right. Both copies are compared in float64: random-weight outputs span orders of magnitude
(inception_v3's reach ~1e6, where float32 rounding alone exceeds 1e-4), and in float64 a wrong
grouping still shows as a large difference while rounding does not. Parameters initialized to all
zeros (ViT's head and class token, biases) get small random values first, so no output is
trivially zero.

Each model runs in its own forked process with a time limit, one thread; the parent captures a
tiny model first, so torch.export's one-time start-up (a few seconds, paid once per process) is
not counted against every model.

Bars (full run): >= 95 % of the models pass; median graph+prune time < 10 s per model.

    python benchmarks/prune_coverage.py [--quick] [--out FILE] [--models a,b,c] [--timeout S]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import traceback
from statistics import median
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import torch
import torchvision
from _bench import emit, parse_args

from slimkit._runtime import set_progress
from slimkit.graph import build_dependency_graph
from slimkit.measure import count_macs, count_params
from slimkit.prune import StructuredConfig, prune, unit_scores

QUICK = ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5"]
INPUT_SIZE = {"inception_v3": 299}  # its native size; every other classifier takes 224
MAX_DIFF = 1e-4  # absolute, in float64
PASS_RATE = 0.95
MAX_MEDIAN_S = 10.0
CONFIG = StructuredConfig(importance="l2", scope="global", target="channels", keep=0.5)


def removals_like_prune(model: torch.nn.Module, graph: Any, config: StructuredConfig) -> dict:
    """The units :func:`slimkit.prune.prune` removes for a one-step global ``channels`` target.

    Recomputed here from :func:`slimkit.prune.unit_scores` (scores normalized by each group's
    mean, lowest first, at least ``min_channels`` left per group); :func:`check_model` verifies
    that the result matches what ``prune`` really produced, so a drift is reported, not hidden.
    """
    scores = unit_scores(model, graph, config, None)
    caps = [max(0, g.size - config.min_channels) for g in graph.groups]
    order = sorted(
        (float(v), gi, ui)
        for gi, s in enumerate(scores)
        for ui, v in enumerate(s / (s.mean() + 1e-12))
    )
    budget = round((1 - config.keep) * graph.num_units)
    counts = [0] * len(caps)
    for _, gi, _ in order:
        if budget <= 0:
            break
        if counts[gi] < caps[gi]:
            counts[gi] += 1
            budget -= 1
    return {
        gi: sorted(np.argsort(scores[gi], kind="stable")[:n].tolist())
        for gi, n in enumerate(counts)
        if n > 0
    }


def check_model(name: str) -> dict[str, Any]:
    """Prune one classifier and check it against the zeroed reference (runs in a child)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = INPUT_SIZE.get(name, 224)
    row: dict[str, Any] = {"model": name, "input": size}
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out_shape = tuple(model(x).shape)
    row["params_before"] = count_params(model)[0]
    row["macs_before"] = count_macs(model, x).macs
    start = time.perf_counter()
    pruned = prune(model, CONFIG, x).eval()
    row["prune_s"] = round(time.perf_counter() - start, 2)
    row["params_after"] = count_params(pruned)[0]
    row["macs_after"] = count_macs(pruned, x).macs

    graph = build_dependency_graph(model, x)
    removals = removals_like_prune(model, graph, CONFIG)
    expected = graph.prune(model, removals).state_dict()
    got = pruned.state_dict()
    same = expected.keys() == got.keys() and all(
        expected[k].shape == got[k].shape and torch.equal(expected[k], got[k]) for k in expected
    )
    del expected, got
    if not same:
        return {**row, "status": "error: prune() removed other units than the replicated choice"}
    zeroed = graph.zero(model, removals).eval()
    del model, graph
    with torch.no_grad():
        a, b = pruned.double()(x.double()), zeroed.double()(x.double())
    row["max_abs_diff"] = float((a - b).abs().max())
    row["out_scale"] = float(b.abs().max())
    problems = []
    if tuple(a.shape) != out_shape:
        problems.append(f"output shape {tuple(a.shape)} != {out_shape}")
    if not row["params_after"] < row["params_before"]:
        problems.append("no fewer params")
    if row["macs_before"] is None or row["macs_after"] is None:
        problems.append("MACs not countable")
    elif not row["macs_after"] < row["macs_before"]:
        problems.append("no fewer MACs")
    if not row["max_abs_diff"] <= MAX_DIFF:
        problems.append(f"pruned != zeroed (max abs diff {row['max_abs_diff']:.3g})")
    row["status"] = "ok" if not problems else "fail: " + "; ".join(problems)
    return row


def _child(name: str, conn: Any) -> None:
    try:
        conn.send(check_model(name))
    except BaseException as exc:  # report everything, including KeyboardInterrupt in the child
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.basename(last.filename)}:{last.lineno}"
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        conn.send({"model": name, "status": f"error: {type(exc).__name__}: {message} ({where})"})
    finally:
        conn.close()


def run_isolated(name: str, timeout: float) -> dict[str, Any]:
    """``check_model`` in a forked process: a crash, hang or memory kill loses one row only."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, send), daemon=True)
    start = time.perf_counter()
    proc.start()
    send.close()
    row: dict[str, Any] | None = None
    answered = receive.poll(timeout)  # also wakes when the child dies without answering
    if answered:
        try:
            row = receive.recv()
        except EOFError:
            row = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if row is None:
        reason = (
            f"timeout after {timeout:.0f} s" if not answered else f"crashed (exit {proc.exitcode})"
        )
        row = {"model": name, "status": f"error: {reason}"}
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


COLUMNS = ["model", "input", "params_before", "params_after", "macs_before", "macs_after",
           "prune_s", "max_abs_diff", "out_scale", "status"]  # fmt: skip


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--models", help="comma-separated model names (default: all or quick set)")
    extra.add_argument("--timeout", type=float, default=None, help="seconds per model")
    known, rest = extra.parse_known_args()
    args = parse_args(__doc__, rest)
    torch.set_num_threads(1)
    set_progress(False)
    os.environ.setdefault("COLUMNS", "200")  # a wide table, also when piped
    build_dependency_graph(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.zeros(1, 2))
    if known.models:
        names = known.models.split(",")
    elif args.quick:
        names = QUICK
    else:
        names = torchvision.models.list_models(module=torchvision.models)
    timeout = known.timeout or (60.0 if args.quick else 900.0)
    rows = []
    for name in names:
        row = run_isolated(name, timeout)
        print(f"{name}: {row['status']} ({row.get('prune_s', '-')} s prune, "
              f"{row['wall_s']} s total)", flush=True)  # fmt: skip
        rows.append({key: row.get(key) for key in COLUMNS} | {"wall_s": row["wall_s"]})
    passed = [r for r in rows if r["status"] == "ok"]
    times = [r["prune_s"] for r in rows if r["prune_s"] is not None]
    rate = len(passed) / len(rows)
    mid = median(times) if times else float("inf")
    bars = [
        {"bar": "models passing", "target": f">= {PASS_RATE:.0%}",
         "measured": f"{len(passed)}/{len(rows)} ({rate:.1%})", "met": rate >= PASS_RATE},
        {"bar": "median graph+prune time", "target": f"< {MAX_MEDIAN_S:g} s",
         "measured": mid, "met": mid < MAX_MEDIAN_S},
    ]  # fmt: skip
    return emit("prune_coverage", args, rows, bars)


if __name__ == "__main__":
    sys.exit(main())
