"""``compile_model``: inference passes, every backend built and checked, the fastest one kept.

The best backend depends on the model, the runtime, the batch size and the machine, so it is
measured, not assumed: every available backend is built (compile and tuning time recorded), its
outputs are compared with PyTorch eager, and all that pass are timed together, interleaved, in
one run, at each batch size asked for. The result holds the whole table.

Example:
    >>> import torch
    >>> from slimkit.models import create_model
    >>> config = CompileConfig(candidates=("torch-eager", "onnxruntime"), max_seconds=0.2)
    >>> result = compile_model(create_model("fmnist_tiny"), config, torch.zeros(1, 1, 28, 28))
    ... # doctest: +SKIP
    >>> result.backend in ("torch-eager", "onnxruntime")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, field_validator
from rich.table import Table
from torch import Tensor, nn

from slimkit._runtime import log, num_threads
from slimkit.compile._backends import BuildContext, get_backend, list_backends
from slimkit.compile._passes import DEFAULT_PASSES, PassRecord, apply_passes, list_passes
from slimkit.config import Config
from slimkit.errors import ConfigError
from slimkit.measure._latency import LatencyStats, time_interleaved
from slimkit.measure._runner import Runner

__all__ = ["BackendRow", "CompileConfig", "CompileResult", "compile_model"]


class CompileConfig(Config):
    """How to compile: which passes, which backends, and how to judge and time them.

    Attributes:
        backend: ``"auto"`` (measure every candidate, keep the fastest faithful one) or one
            backend's name (still checked against PyTorch).
        candidates: The backends ``auto`` tries; default every registered one.
        batch_sizes: Batch sizes to time; the choice is made for the first (the one you serve
            with) and the table shows the winner at each.
        threads: Threads every backend uses (ONNX Runtime, OpenVINO, TVM and torch alike).
        passes: Inference passes run on the model first (see
            :func:`slimkit.compile.list_passes`); each is checked to ``pass_atol``.
        pass_atol: Largest max abs difference a pass may introduce (fp32).
        atol: fp32 backends pass when max abs error <= ``atol + rtol * max |reference|``.
        rtol: See ``atol``.
        accuracy_tolerance: Reduced-precision backends (bf16, int8) pass when their accuracy
            on the labelled check data is at most this many points below PyTorch fp32's.
        min_cosine: Without labels, reduced-precision backends pass when the mean cosine of
            their outputs to PyTorch's is at least this. The default keeps bf16 backends
            (all-MiniLM-L6-v2: 0.99999) and rejects int8 ones (0.997 there): lower it to 0.99
            to let int8 compete.
        max_seconds: Timing budget per backend and batch size (interleaved rounds).
        options: Options per backend, e.g. ``{"tvm": {"tune_seconds": 600}}``.

    Example:
        >>> CompileConfig(batch_sizes=(1, 64)).batch_sizes
        (1, 64)
    """

    backend: str = "auto"
    candidates: tuple[str, ...] | None = None
    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] = (1,)
    threads: Annotated[int, Field(ge=1)] = 1
    passes: tuple[str, ...] = DEFAULT_PASSES
    pass_atol: Annotated[float, Field(gt=0)] = 1e-5
    atol: Annotated[float, Field(ge=0)] = 1e-4
    rtol: Annotated[float, Field(ge=0)] = 1e-4
    accuracy_tolerance: Annotated[float, Field(ge=0)] = 0.1
    min_cosine: Annotated[float, Field(gt=0, le=1)] = 0.999
    max_seconds: Annotated[float, Field(gt=0)] = 2.0
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("batch_sizes")
    @classmethod
    def _some_batch(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("batch_sizes needs at least one batch size, e.g. [1]")
        return value

    @field_validator("passes")
    @classmethod
    def _known_passes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in list_passes()]
        if unknown:
            raise ValueError(f"unknown pass(es) {unknown}; known: {list_passes()}")
        return value

    def backend_names(self) -> list[str]:
        """The backends to try, validated against the registry."""
        if self.backend != "auto":
            names = ["torch-eager", self.backend] if self.backend != "torch-eager" else []
        else:
            names = list(self.candidates or list_backends())
            if "torch-eager" not in names:
                names.insert(0, "torch-eager")  # the reference is always measured
        for name in [*names, *self.options]:
            get_backend(name)  # raises with the list of registered backends
        return names or ["torch-eager"]


@dataclass
class BackendRow:
    """One backend in the table: how it was built, checked and timed."""

    backend: str
    precision: str
    status: str  # "ok", "skipped: <reason>", "failed: <reason>", "rejected: <reason>"
    build_seconds: float | None = None
    max_abs_error: float | None = None
    cosine: float | None = None
    accuracy: float | None = None
    size_bytes: int | None = None
    latency: dict[int, dict[str, float]] = field(default_factory=dict)  # batch -> stats
    speedup: dict[int, float] = field(default_factory=dict)  # batch -> vs torch-eager

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CompileResult:
    """The compiled model: the chosen runner, the model after the passes, and the evidence.

    Attributes:
        runner: The chosen backend's runner (close it when done; use it as a context manager).
        backend: The chosen backend's name.
        model: The PyTorch model after the inference passes (eval mode).
        passes: What each pass did.
        rows: Every backend tried, in order.
        fastest: The fastest passing backend at each batch size.
        workdir: Where the artifacts are (ONNX files, compiled libraries).
    """

    runner: Runner
    backend: str
    model: nn.Module
    passes: list[PassRecord]
    rows: list[BackendRow]
    fastest: dict[int, str]
    workdir: Path

    def table(self) -> Table:
        """The backend table, for printing with rich."""
        batches = sorted({b for row in self.rows for b in row.latency})
        table = Table(title="compile: backends measured here")
        for col in ("backend", "precision", "status", "build s", "max err", "accuracy"):
            table.add_column(col)
        for b in batches:
            table.add_column(f"p50 ms b{b}", justify="right")
            table.add_column(f"x eager b{b}", justify="right")
        for row in self.rows:
            cells = [
                row.backend + (" *" if row.backend == self.backend else ""),
                row.precision,
                row.status,
                _fmt(row.build_seconds, ".1f"),
                _fmt(row.max_abs_error, ".1e"),
                _fmt(None if row.accuracy is None else 100 * row.accuracy, ".2f"),
            ]
            for b in batches:
                stats = row.latency.get(b)
                cells += [
                    _fmt(stats and stats["p50_ms"], ".3f"),
                    _fmt(row.speedup.get(b), ".2f"),
                ]
            table.add_row(*cells)
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for reports: one flat record per backend and per pass."""
        return {
            "backend": self.backend,
            "fastest": {f"batch {k}": v for k, v in self.fastest.items()},
            "passes": [asdict(p) for p in self.passes],
            "backends": [_flat(row) for row in self.rows],
        }


def _flat(row: BackendRow) -> dict[str, Any]:
    record: dict[str, Any] = {
        "backend": row.backend,
        "precision": row.precision,
        "status": row.status,
        "build_s": row.build_seconds,
        "max_abs_error": row.max_abs_error,
        "cosine": row.cosine,
        "accuracy": row.accuracy,
        "size_bytes": row.size_bytes,
    }
    for batch, stats in row.latency.items():
        record[f"p50_ms_b{batch}"] = stats["p50_ms"]
        record[f"p99_ms_b{batch}"] = stats["p99_ms"]
        record[f"samples_per_s_b{batch}"] = stats["samples_per_second"]
        record[f"speedup_b{batch}"] = row.speedup.get(batch)
    return record


def compile_model(
    model: nn.Module,
    config: CompileConfig,
    example_inputs: Tensor,
    *,
    check_inputs: Tensor | None = None,
    check_labels: Tensor | None = None,
    lowered_onnx: str | os.PathLike[str] | None = None,
    calibration_inputs: Tensor | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> CompileResult:
    """Apply the inference passes, build every backend, check and time them, keep the fastest.

    Args:
        model: The trained model (not modified).
        config: What to try and how to judge it.
        example_inputs: One real input batch (shapes, export, timing).
        check_inputs: Real inputs every backend's outputs are compared on (default:
            ``example_inputs``); with ``check_labels``, accuracies are compared too.
        check_labels: Labels of ``check_inputs`` (classification models).
        lowered_onnx: An already-lowered ONNX model (the int8 file of the ``quantize`` step),
            run by the ``*-int8`` backends.
        calibration_inputs: Real training samples for the backends that quantize the model
            themselves (``executorch-int8``); without them those backends are skipped.
        workdir: Where the artifacts go (default: a new temporary folder, kept).

    Returns:
        A :class:`CompileResult`; its ``runner`` is the chosen backend's.

    Raises:
        ConfigError: Unknown backends or passes (before any work), or no backend passed.
    """
    names = config.backend_names()
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="slimkit-compile-"))
    folder.mkdir(parents=True, exist_ok=True)
    fused, passes = apply_passes(model, example_inputs, config.passes, atol=config.pass_atol)
    check_inputs = example_inputs if check_inputs is None else check_inputs
    with num_threads(config.threads):
        with torch.inference_mode():
            reference = fused(check_inputs).float()
        ctx = BuildContext(
            fused,
            example_inputs,
            folder,
            config.threads,
            lowered_onnx=Path(lowered_onnx) if lowered_onnx else None,
            calibration=calibration_inputs,
        )
        runners, rows = _build_all(names, ctx, config)
        _check_all(runners, rows, reference, check_inputs, check_labels, config)
        fastest = _time_all(runners, rows, example_inputs, config)
    chosen = _choose(config, rows, fastest)
    for name, runner in runners.items():
        if name != chosen:
            runner.close()
    log(f"compile: chose {chosen} ({', '.join(f'b{b}: {n}' for b, n in fastest.items())})")
    return CompileResult(runners[chosen], chosen, fused, passes, rows, fastest, folder)


def _build_all(
    names: list[str], ctx: BuildContext, config: CompileConfig
) -> tuple[dict[str, Runner], list[BackendRow]]:
    example = ctx.example_inputs
    runners: dict[str, Runner] = {}
    rows = []
    for name in names:
        backend = get_backend(name)
        row = BackendRow(name, backend.precision, "ok")
        rows.append(row)
        ctx.options = dict(config.options.get(name, {}))
        reason = backend.unavailable(ctx)
        if reason:
            row.status = f"skipped: {reason}"
            log(f"compile: {name} skipped: {reason}")
            continue
        log(f"compile: building {name}")
        start = time.perf_counter()
        try:
            runner = backend.build(ctx)
            runner(example)  # first call: lazy compilation belongs to the build time
        except Exception as exc:
            if name == "torch-eager":
                raise
            row.status = f"failed: {_reason(exc)}"
            log(f"compile: {name} failed: {_reason(exc)}")
            continue
        row.build_seconds = time.perf_counter() - start
        row.size_bytes = _size(runner)
        runners[name] = runner
    return runners, rows


def _check_all(
    runners: dict[str, Runner],
    rows: list[BackendRow],
    reference: Tensor,
    inputs: Tensor,
    labels: Tensor | None,
    config: CompileConfig,
) -> None:
    by_name = {row.backend: row for row in rows}
    ref_accuracy = _accuracy(reference, labels)
    for name, runner in list(runners.items()):
        row = by_name[name]
        try:
            out = _run_batched(runner, inputs).float()
        except Exception as exc:
            row.status = f"failed: {_reason(exc)}"
            runners.pop(name).close()
            continue
        row.max_abs_error = float((out - reference).abs().max())
        row.cosine = _cosine(out, reference)
        row.accuracy = _accuracy(out, labels)
        problem = _fidelity_problem(row, reference, ref_accuracy, config)
        if problem:
            row.status = f"rejected: {problem}"
            log(f"compile: {name} rejected: {problem}")
            runners.pop(name).close()


def _fidelity_problem(
    row: BackendRow, reference: Tensor, ref_accuracy: float | None, config: CompileConfig
) -> str | None:
    if row.precision == "fp32":
        limit = config.atol + config.rtol * float(reference.abs().max())
        if row.max_abs_error is not None and row.max_abs_error > limit:
            return f"max abs error {row.max_abs_error:.2e} > {limit:.2e}"
        return None
    if ref_accuracy is not None and row.accuracy is not None:
        drop = 100 * (ref_accuracy - row.accuracy)
        if drop > config.accuracy_tolerance + 1e-9:  # "within 0.1 point" includes 0.1
            return f"accuracy {drop:.2f} points below fp32 (> {config.accuracy_tolerance})"
        return None
    if row.cosine is not None and row.cosine < config.min_cosine:
        return f"cosine {row.cosine:.5f} < {config.min_cosine}"
    return None


def _time_all(
    runners: dict[str, Runner], rows: list[BackendRow], example: Tensor, config: CompileConfig
) -> dict[int, str]:
    by_name = {row.backend: row for row in rows}
    names = list(runners)
    fastest = {}
    for batch in config.batch_sizes:
        inputs = _batch_of(example, batch)
        log(f"compile: timing {len(names)} backend(s) at batch {batch}")
        timings = time_interleaved(
            [runners[n] for n in names],
            inputs,
            warmup=3,
            min_runs=10,
            max_seconds=config.max_seconds,
            rounds=4,
        )
        p50 = {}
        for name, timing in zip(names, timings, strict=True):
            stats: LatencyStats = timing.stats
            by_name[name].latency[batch] = {
                "p50_ms": stats.p50_ms,
                "p99_ms": stats.p99_ms,
                "samples_per_second": timing.samples_per_second,
            }
            p50[name] = stats.p50_ms
        for name in names:
            by_name[name].speedup[batch] = p50["torch-eager"] / p50[name]
        fastest[batch] = min(names, key=p50.__getitem__)
    return fastest


def _choose(config: CompileConfig, rows: list[BackendRow], fastest: dict[int, str]) -> str:
    if config.backend == "auto":
        return fastest[config.batch_sizes[0]]
    row = next(r for r in rows if r.backend == config.backend)
    if not row.ok:
        raise ConfigError(
            f"backend {config.backend!r} cannot be used: {row.status}. Use backend: auto, or "
            "fix the reason above."
        )
    return config.backend


def _batch_of(example: Tensor, batch: int) -> Tensor:
    reps = -(-batch // len(example))
    return example.repeat(reps, *([1] * (example.ndim - 1)))[:batch].contiguous()


def _run_batched(runner: Runner, inputs: Tensor, batch: int = 256) -> Tensor:
    return torch.cat([runner(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def _cosine(out: Tensor, ref: Tensor) -> float:
    flat_out, flat_ref = out.reshape(len(out), -1).double(), ref.reshape(len(ref), -1).double()
    return float(torch.nn.functional.cosine_similarity(flat_out, flat_ref, dim=1).mean())


def _accuracy(out: Tensor, labels: Tensor | None) -> float | None:
    if labels is None or out.ndim != 2:
        return None
    return float((out.argmax(1) == labels).double().mean())


def _size(runner: Runner) -> int | None:
    try:
        return runner.artifact_size_bytes()
    except Exception:
        return None


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    if len(text) > 300:
        text = text[:300] + "..."
    return text


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
