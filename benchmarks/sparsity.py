"""Unstructured sparsity: accuracy and size of fmnist_resnet at 80 %, and where sparsity is faster.

Bars (full run): fmnist_resnet pruned to 80 % sparsity (global magnitude, cubic ramp during at
most 3 epochs of fine-tuning) stays within 0.5 point of the dense model's Fashion-MNIST test
accuracy, both of the dense model as trained and of the dense model fine-tuned with the same
epochs (the control: extra epochs alone may add accuracy), and its sparse file (bitmask +
non-zero values) is at most 0.35x the dense file.

Speed has no bar; it is measured as ratios in the same run, interleaved, one thread (the
table's ``ratio`` is sparse / dense: time in ms, below 1 is faster; bytes, below 1 is smaller):
- the model: dense kernels on the dense and on the sparse weights (zeros do not make dense
  kernels faster), and the sparse convolutions run as im2col + CSR sparse x dense matmul (and
  im2col + dense matmul, to separate the cost of im2col); the dense model against a copy of
  itself gives the noise floor;
- one big Linear (1024 and 4096 square) at several sparsities and batches: dense vs CSR;
- 2:4 semi-structured (``torch.sparse.to_sparse_semi_structured``) where it runs.
Then it prints, per case, the lowest sparsity at which the sparse path is at least 1.1x faster.

The dense model comes from the model's reference training (``model_info(...).train_defaults``,
full data, one thread), or from ``--trained FOLDER`` (a saved fmnist_resnet).

    python benchmarks/sparsity.py [--quick] [--out FILE] [--trained FOLDER]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import torch
from _bench import emit, parse_args
from rich.console import Console
from torch import Tensor, nn
from torch.nn import functional as F

from slimkit._runtime import num_threads
from slimkit.data import DataConfig, DataSplits, load_dataset
from slimkit.measure import accuracy, as_runner, time_interleaved
from slimkit.models import create_model, model_info
from slimkit.prune import (
    UnstructuredConfig,
    prunable_layers,
    save_sparse,
    sparsify,
    sparsity_stats,
)
from slimkit.serialize import load_model, save_weights
from slimkit.train import TrainConfig, train

SPARSITY = 0.8
MAX_DROP_PT = 0.5
MAX_SIZE_RATIO = 0.35
FINETUNE_EPOCHS = 3
QUICK_TRAIN = {"epochs": 1, "batch_size": 32}  # a smoke run: its accuracies mean little
PAYS = 1.1  # a speed-up below this is within the noise of a shared machine
Row = dict[str, Any]


def main() -> int:
    args = parse_args(__doc__, trained=True)
    torch.set_num_threads(1)  # two cores shared with other jobs: one thread everywhere
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    data = load_dataset(
        DataConfig(train_subset=1000, test_subset=500) if args.quick else DataConfig()
    )
    dense = _dense(args, data)
    finetune = TrainConfig(epochs=FINETUNE_EPOCHS, lr=0.02, augment=False, threads=1)
    if args.quick:
        finetune = finetune.model_copy(update=QUICK_TRAIN)
    config = UnstructuredConfig(sparsity=SPARSITY, schedule="cubic", finetune=finetune)
    sparse = sparsify(dense, config, data)
    dense_tuned = train(dense, finetune, data).model  # the control: same epochs, no pruning
    models = {"dense": dense, "dense_tuned": dense_tuned, "sparse": sparse}
    rows, bars = _quality(models, prunable_layers(dense, config), data)
    speed = _model_speed(dense, sparse, prunable_layers(dense, config), args.quick)
    speed += _linear_speed(args.quick)
    speed.append(_semi_structured())
    _where_it_pays(speed)
    return emit("sparsity", args, rows + speed, bars)


def _dense(args: argparse.Namespace, data: DataSplits) -> nn.Module:
    if args.trained is not None:
        return load_model(args.trained)
    defaults = model_info("fmnist_resnet").train_defaults
    config = TrainConfig(**{**defaults, "threads": 1, **(QUICK_TRAIN if args.quick else {})})
    return train(create_model("fmnist_resnet"), config, data).model


# --- accuracy and size -------------------------------------------------------------------------


def _quality(
    models: dict[str, nn.Module], pruned: list[str], data: DataSplits
) -> tuple[list[Row], list[Row]]:
    acc = {name: accuracy(model, data.test_loader()) for name, model in models.items()}
    # Against the dense model as trained, and against the dense model given the same extra
    # epochs: the fine-tuning alone may add accuracy that sparsity then hides.
    drops = {name: (acc[name] - acc["sparse"]) * 100 for name in ("dense", "dense_tuned")}
    sparse = models["sparse"]
    with tempfile.TemporaryDirectory() as tmp:
        dense_bytes = save_weights(models["dense"], Path(tmp) / "d.safetensors").stat().st_size
        sparse_bytes = save_sparse(sparse, Path(tmp) / "s.safetensors").stat().st_size
        half = save_sparse(sparse, Path(tmp) / "h.safetensors", values_dtype=torch.float16)
        half_bytes = half.stat().st_size
    s = sparsity_stats(sparse, pruned).sparsity
    whole = f"whole model {sparsity_stats(sparse).model_sparsity:.1%} zero"
    rows = [
        _row("test accuracy vs dense", s, None, acc["dense"], acc["sparse"],
             f"{-drops['dense']:+.2f} pt"),
        _row("test accuracy vs dense + same fine-tuning", s, None, acc["dense_tuned"],
             acc["sparse"], f"{-drops['dense_tuned']:+.2f} pt"),
        _row("file bytes (fp32 values, exact)", s, None, dense_bytes, sparse_bytes, whole),
        _row("file bytes (fp16 values, lossy)", s, None, dense_bytes, half_bytes, whole),
    ]  # fmt: skip
    ratio = sparse_bytes / dense_bytes
    bars = [
        {"bar": f"accuracy drop at {SPARSITY:.0%} vs dense (pt)", "target": f"<= {MAX_DROP_PT}",
         "measured": drops["dense"], "met": drops["dense"] <= MAX_DROP_PT},
        {"bar": f"accuracy drop at {SPARSITY:.0%} vs dense + same fine-tuning (pt)",
         "target": f"<= {MAX_DROP_PT}", "measured": drops["dense_tuned"],
         "met": drops["dense_tuned"] <= MAX_DROP_PT},
        {"bar": "sparse file / dense file", "target": f"<= {MAX_SIZE_RATIO}",
         "measured": ratio, "met": ratio <= MAX_SIZE_RATIO},
    ]  # fmt: skip
    return rows, bars


def _row(
    what: str, sparsity: float, batch: int | None, dense: float, sparse: float, verdict: str
) -> Row:
    return {"what": what, "sparsity": round(sparsity, 4), "batch": batch or "", "dense": dense,
            "sparse": sparse, "ratio": sparse / dense, "verdict": verdict}  # fmt: skip


# --- speed -------------------------------------------------------------------------------------


class CsrConv2d(nn.Module):
    """A Conv2d run as im2col (``F.unfold``) and a CSR sparse x dense matmul (``dense=False``),
    or the same im2col with a dense matmul (``dense=True``), to separate the two costs."""

    def __init__(self, conv: nn.Conv2d, dense: bool = False) -> None:
        super().__init__()
        if conv.groups != 1 or isinstance(conv.padding, str):
            raise ValueError("only ungrouped convolutions with numeric padding")
        weight = conv.weight.detach().reshape(conv.out_channels, -1)
        self.weight = weight.clone() if dense else weight.to_sparse_csr()
        self.bias = None if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1)
        self.conv = (conv.kernel_size, conv.dilation, conv.padding, conv.stride)

    def forward(self, x: Tensor) -> Tensor:
        kernel, dilation, padding, stride = self.conv
        n, _, h, w = x.shape
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, d, p, s in zip((h, w), kernel, dilation, padding, stride, strict=True)
        )
        cols = F.unfold(x, kernel, dilation, padding, stride)  # (n, C*kh*kw, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C*kh*kw, n*L)
        if self.weight.layout == torch.strided:
            out = torch.mm(self.weight, cols)
        else:
            out = torch.sparse.mm(self.weight, cols)
        out = out.view(-1, n, out_h, out_w).transpose(0, 1).contiguous()
        return out if self.bias is None else out + self.bias


def _im2col_model(model: nn.Module, layers: list[str], dense: bool) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for name in layers:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, CsrConv2d(model.get_submodule(name), dense=dense))
    return model


def _model_speed(dense: nn.Module, sparse: nn.Module, layers: list[str], quick: bool) -> list[Row]:
    csr = _im2col_model(sparse, layers, dense=False)
    im2col = _im2col_model(sparse, layers, dense=True)
    # A second copy of the dense model shows the noise floor of this machine.
    models = (dense, copy.deepcopy(dense), sparse, im2col, csr)
    runners = [as_runner(m) for m in models]
    labels = ["dense again (noise floor)", "dense kernels, sparse weights", "im2col + dense mm",
              "im2col + CSR mm"]  # fmt: skip
    rows = []
    with num_threads(1):
        for batch in (1,) if quick else (1, 64):
            x = torch.randn(batch, 1, 28, 28)
            reference = runners[2](x)
            for runner in runners[3:]:
                torch.testing.assert_close(runner(x), reference, rtol=1e-4, atol=1e-4)
            times = time_interleaved(runners, x, **_timing(quick, slow=batch > 1))
            base = times[0].stats.p50_ms
            rows += [
                _speed_row(f"fmnist_resnet: {label}", SPARSITY, batch, base, t.stats.p50_ms)
                for label, t in zip(labels, times[1:], strict=True)
            ]
    for runner in runners:
        runner.close()
    return rows


def _linear_speed(quick: bool) -> list[Row]:
    sizes = (1024,) if quick else (1024, 4096)
    sparsities = (0.5, 0.9, 0.99) if quick else (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    gen = torch.Generator().manual_seed(0)
    rows = []
    with num_threads(1):
        for size in sizes:
            for batch in (1, 64):
                x = torch.randn(batch, size, generator=gen)
                for sparsity in sparsities:
                    rows.append(_linear_row(size, batch, sparsity, x, gen, quick))
    return rows


def _linear_row(
    size: int, batch: int, sparsity: float, x: Tensor, gen: torch.Generator, quick: bool
) -> Row:
    weight = torch.randn(size, size, generator=gen)
    # Magnitude pruning of a Gaussian weight: a random pattern at the given sparsity.
    threshold = weight.abs().flatten().kthvalue(int(sparsity * weight.numel())).values
    weight[weight.abs() <= threshold] = 0
    csr = weight.to_sparse_csr()

    def dense_run(inputs: Tensor) -> Tensor:
        return F.linear(inputs, weight)

    def csr_run(inputs: Tensor) -> Tensor:
        return torch.sparse.mm(csr, inputs.t()).t()  # the same (batch, out) result, as a view

    torch.testing.assert_close(csr_run(x), dense_run(x), rtol=1e-3, atol=1e-3)
    dense_t, csr_t = time_interleaved([dense_run, csr_run], x, **_timing(quick))
    what = f"Linear {size}x{size}: CSR mm"
    return _speed_row(what, sparsity, batch, dense_t.stats.p50_ms, csr_t.stats.p50_ms)


def _semi_structured() -> Row:
    weight = torch.randn(128, 128)
    weight.view(-1, 4)[:, :2] = 0  # a valid 2:4 pattern
    try:
        from torch.sparse import to_sparse_semi_structured

        to_sparse_semi_structured(weight)
        verdict = "converted on CPU (unexpected): time it"
    except Exception as exc:  # the error is the finding
        verdict = f"not on this CPU: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    what = "2:4 semi-structured (to_sparse_semi_structured)"
    return {"what": what, "sparsity": 0.5, "batch": "", "dense": "", "sparse": "", "ratio": "",
            "verdict": verdict}  # fmt: skip


def _speed_row(what: str, sparsity: float, batch: int, dense_ms: float, sparse_ms: float) -> Row:
    speedup = dense_ms / sparse_ms
    verdict = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    return {"what": what, "sparsity": sparsity, "batch": batch, "dense": dense_ms,
            "sparse": sparse_ms, "ratio": sparse_ms / dense_ms, "verdict": verdict}  # fmt: skip


def _timing(quick: bool, slow: bool = False) -> dict[str, Any]:
    """Interleaved blocks (A B, B A, ...), so that load from other jobs slows both alike."""
    if quick:
        return {"warmup": 3, "min_runs": 4, "rounds": 2, "max_seconds": 0.05}
    if slow:  # calls of seconds (the im2col models at batch 64): fewer runs
        return {"warmup": 1, "min_runs": 6, "rounds": 2, "max_seconds": 2.0}
    return {"warmup": 3, "min_runs": 12, "rounds": 6, "max_seconds": 1.2}


def _where_it_pays(rows: list[Row]) -> None:
    """Print, per case, the lowest sparsity at which the sparse path is clearly faster."""
    console = Console()
    cases: dict[tuple[str, int], list[Row]] = {}
    console.print(f"[bold]Where sparse execution pays[/] (>= {PAYS}x, one thread, this CPU):")
    for row in rows:
        if "noise floor" in row["what"]:
            console.print(f"  (noise floor at batch {row['batch']}: the dense model against "
                          f"itself, {row['verdict']})")  # fmt: skip
        elif isinstance(row["ratio"], float):
            cases.setdefault((row["what"], row["batch"]), []).append(row)
    for (what, batch), group in cases.items():
        group = sorted(group, key=lambda r: r["sparsity"])
        paying = [r for r in group if 1 / r["ratio"] >= PAYS]
        at = next((r for r in group if r["sparsity"] == SPARSITY), None)
        here = f"; at {SPARSITY:.0%}: {at['verdict']}" if at else ""
        if paying:
            found = f"from {paying[0]['sparsity']:.0%} ({paying[0]['verdict']}){here}"
        else:
            best = max(group, key=lambda r: 1 / r["ratio"])
            found = f"never (best: {best['verdict']} at {best['sparsity']:.0%})"
        console.print(f"  {what}, batch {batch}: {found}")


if __name__ == "__main__":
    sys.exit(main())
