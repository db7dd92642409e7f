"""Lowering to real int8 (and fp16) execution in ONNX Runtime, with ONNX Runtime's own tools.

Nothing here re-implements a kernel: :func:`int8_static_onnx` and :func:`int8_dynamic_onnx` call
``onnxruntime.quantization`` (``quant_pre_process``, ``quantize_static`` with a calibration
reader fed from real samples, ``quantize_dynamic``), and ONNX Runtime's int8 kernels run the
result.

Which int8 format is fast depends on the CPU and on the model, and which one keeps the model
intact depends on the model: on this 2-core AVX-512 VNNI CPU ONNX Runtime's default QDQ with
signed activations (S8S8) ran a small ResNet about 3x slower at batch 64 than unsigned
activations with signed weights (U8S8), dynamic int8 made a CNN slower than fp32, and static QDQ
of every op destroyed all-MiniLM-L6-v2 (embedding cosine 0.35). So :func:`int8_candidates` does
not pick a format by default: it builds several, measures each on this machine against the fp32
model (interleaved timing, the same inputs) and against the fp32 outputs (a fidelity score), and
returns the whole table with the fastest candidate whose fidelity passes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from rich.table import Table
from torch import Tensor

from slimkit._io import atomic_path
from slimkit._optional import require
from slimkit._runtime import log
from slimkit.compile._ort import OnnxRuntimeRunner
from slimkit.config import Config
from slimkit.env import _read_cpuinfo
from slimkit.errors import ConfigError, DataError
from slimkit.measure._latency import time_interleaved
from slimkit.measure._profile import COMPARE_ROUNDS, ProfileConfig

__all__ = [
    "DynamicInt8Options",
    "Fidelity",
    "Int8Candidate",
    "Int8Row",
    "Int8Selection",
    "StaticInt8Options",
    "agreement_fidelity",
    "cosine_fidelity",
    "cpu_needs_reduce_range",
    "default_int8_candidates",
    "fp16_onnx",
    "int8_candidates",
    "int8_dynamic_onnx",
    "int8_static_onnx",
]

Fidelity = Callable[[Tensor, Tensor], float]
"""``fidelity(fp32_outputs, candidate_outputs) -> score``; higher is better."""

CalibrationMethod = Literal["minmax", "entropy", "percentile", "distribution"]
"""``distribution`` is rejected for int8 (see :class:`StaticInt8Options`); it is named so that
the error says why."""


class StaticInt8Options(Config):
    """Static int8 quantization with ONNX Runtime (activation ranges from calibration).

    Attributes:
        activation_type: ``uint8`` (asymmetric activations; with int8 weights the fast U8S8 path
            of x86 CPUs) or ``int8``.
        weight_type: ``int8`` or ``uint8`` (``int8`` activations need ``int8`` weights).
        per_channel: One weight scale per output channel (else one per tensor).
        quant_format: ``qdq`` (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses
            into int8 kernels) or ``qoperator`` (QLinearConv, QLinearMatMul, ... directly).
        calibrate_method: ``minmax``, ``entropy`` (KL divergence) or ``percentile``
            (``distribution``, ONNX Runtime's float8 calibration, is rejected: with int8 types
            it broke the model).
        moving_average: With ``minmax``: an exponential moving average of the per-batch ranges.
        averaging_constant: Smoothing factor of the moving average.
        percentile: With ``percentile``: the percentile of ``|x|`` kept.
        num_bins: Histogram bins of the ``entropy`` and ``percentile`` calibrators. The entropy
            search is ONNX Runtime's Python code and costs about 1 s per calibrated tensor at
            2048 bins (0.1 s at 512) on this CPU.
        op_types_to_quantize: Only these ONNX op types (e.g. ``("MatMul",)``); ``None``: all
            that ONNX Runtime can quantize.
        nodes_to_exclude: Node names kept in float.
        reduce_range: 7-bit weights. ``None`` (default) decides by the CPU: on x86 without VNNI
            the uint8 x int8 kernels add pairs of products in 16 bits, which saturate with
            full 8-bit weights (measured on an AVX2 EPYC: per-channel U8S8 QDQ flipped 3 % of
            fmnist_resnet's predictions; with 7-bit weights 0.7 %); with VNNI, or on ARM, 8 bits.
        symmetric_activations: Symmetric activation ranges.
        calibration_batch: Samples per calibration run.
        preprocess: Run ``quant_pre_process`` first (shape inference and ONNX Runtime's basic
            graph optimizations, which fold BatchNorm into Conv so it is quantized once).
        extra_options: Passed to ``quantize_static`` last (overrides the fields above).
    """

    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    calibrate_method: CalibrationMethod = "minmax"
    moving_average: bool = False
    averaging_constant: Annotated[float, Field(gt=0, le=1)] = 0.01
    percentile: Annotated[float, Field(gt=50, le=100)] = 99.999
    num_bins: Annotated[int, Field(ge=512)] = 2048
    op_types_to_quantize: tuple[str, ...] | None = None
    nodes_to_exclude: tuple[str, ...] = ()
    reduce_range: bool | None = None
    symmetric_activations: bool = False
    calibration_batch: Annotated[int, Field(ge=1)] = 32
    preprocess: bool = True
    extra_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> StaticInt8Options:
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError(
                "int8 activations with uint8 weights are not supported by ONNX Runtime"
            )
        if self.calibrate_method == "distribution":
            # ONNX Runtime's Distribution calibration is its method for float8 types; with int8
            # types ORT 1.32 produced a broken model (fmnist_resnet: 15 % of predictions kept).
            raise ValueError(
                "calibrate_method='distribution' is ONNX Runtime's calibration for float8 types; "
                "with int8 it breaks the model. Use minmax, entropy or percentile."
            )
        if self.moving_average and self.calibrate_method != "minmax":
            raise ValueError("moving_average applies to calibrate_method='minmax' only")
        if self.op_types_to_quantize is not None and not self.op_types_to_quantize:
            raise ValueError("op_types_to_quantize is empty; use None to quantize every op type")
        return self


class DynamicInt8Options(Config):
    """Dynamic int8 quantization with ONNX Runtime (int8 weights, activations at run time).

    Attributes:
        per_channel: One weight scale per output channel (per tensor is faster, less exact).
        weight_type: ``int8`` or ``uint8``.
        reduce_range: 7-bit weights; ``None``: 7 bits on x86 CPUs without VNNI (see
            :class:`StaticInt8Options`). Default 8 bits: unlike the static convolutions,
            dynamic MatMulInteger kept all-MiniLM-L6-v2 as close with 8-bit weights on an AVX2
            CPU without VNNI (embedding cosine 0.992 vs 0.991 with 7 bits).
        op_types_to_quantize: Only these ONNX op types (e.g. ``("MatMul",)``); ``None``: all
            that ONNX Runtime quantizes dynamically (MatMul, Gemm, Attention, LSTM, ...).
        nodes_to_exclude: Node names kept in float.
        transformer_fusions: Apply ONNX Runtime's transformer fusions first (fused Attention
            with the padding mask as ``mask_index``, SkipLayerNormalization, BiasGelu), so that
            the attention blocks' Q/K/V projections become int8 ``QAttention``; without them
            only the other MatMuls are quantized. An error for a model no fusion matches.
        preprocess: Run ``quant_pre_process`` first.
        extra_options: Passed to ``quantize_dynamic`` last.
    """

    per_channel: bool = True
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool | None = False
    op_types_to_quantize: tuple[str, ...] | None = None
    nodes_to_exclude: tuple[str, ...] = ()
    transformer_fusions: bool = False
    preprocess: bool = True
    extra_options: dict[str, Any] = Field(default_factory=dict)


def int8_static_onnx(
    fp32_onnx: str | os.PathLike[str],
    calibration_inputs: Tensor | Iterable[Tensor],
    out_path: str | os.PathLike[str],
    options: StaticInt8Options | None = None,
) -> Path:
    """Quantize an fp32 ONNX model to static int8 with ONNX Runtime, calibrated on real samples.

    Args:
        fp32_onnx: The fp32 model (e.g. from :func:`slimkit.compile._onnx.export_onnx`).
        calibration_inputs: A few hundred real inputs (one tensor, or batches of them) shaped
            like the model's input; they set the activation ranges.
        out_path: Where to write the int8 model (atomically).
        options: How to quantize (default: U8S8 QDQ, per-channel weights, min-max, 7-bit
            weights on x86 CPUs without VNNI).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: The calibration data is empty, not finite, or not shaped like the input.

    Example:
        >>> options = StaticInt8Options(calibrate_method="percentile", percentile=99.99)
        >>> int8_static_onnx("fp32.onnx", data.calibration_inputs(256), "int8.onnx", options)
        ... # doctest: +SKIP
    """
    q = require("onnxruntime.quantization", "onnx", "int8 quantization with ONNX Runtime")
    options = options or StaticInt8Options()
    source = _existing(fp32_onnx)
    name, dtype, shape = _model_input(source)
    batches = _calibration_batches(
        calibration_inputs, name, dtype, shape, options.calibration_batch
    )
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
        "distribution": q.CalibrationMethod.Distribution,
    }
    extra: dict[str, Any] = {"ActivationSymmetric": options.symmetric_activations}
    if options.moving_average:
        extra |= {
            "CalibMovingAverage": True,
            "CalibMovingAverageConstant": options.averaging_constant,
        }
    if options.calibrate_method == "percentile":
        extra["CalibPercentile"] = options.percentile
    extra |= options.extra_options
    with _quantizer_call("static", source, out_path, options) as (model_in, tmp, out):
        op_types = list(options.op_types_to_quantize or []) or None
        reader: _BatchReader | None = _BatchReader(name, batches)
        cache = None
        if options.calibrate_method != "minmax":
            # quantize_static cannot set a histogram calibrator's bin count, and with ORT's
            # default for entropy (128 bins, 128 quantized bins) the KL search has one candidate
            # threshold, the full range: entropy would silently equal min-max. So ORT's own
            # calibrator runs here with `num_bins`, and quantize_static reads its ranges.
            cache = tmp / "ranges.json"
            _histogram_ranges(model_in, reader, options, op_types, methods, tmp, cache)
            reader = None
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_static(
                str(model_in),
                str(out),
                reader,
                quant_format=q.QuantFormat.QDQ
                if options.quant_format == "qdq"
                else q.QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                per_channel=options.per_channel,
                reduce_range=_reduce_range(options.reduce_range),
                activation_type=types[options.activation_type],
                weight_type=types[options.weight_type],
                nodes_to_exclude=list(options.nodes_to_exclude),
                calibrate_method=methods[options.calibrate_method],
                extra_options=extra,
                calibration_cache_path=None if cache is None else str(cache),
            )
    return Path(out_path)


def int8_dynamic_onnx(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: DynamicInt8Options | None = None,
) -> Path:
    """Quantize an fp32 ONNX model to dynamic int8 with ONNX Runtime (no calibration needed).

    The weights of MatMul/Gemm/Attention and LSTM ops become int8; their input activations are
    quantized at run time from each batch's own range. This suits transformers, whose activation
    ranges vary from input to input, and LSTMs (``DynamicQuantizeLSTM``); on a CNN it is usually
    slower than fp32. ONNX Runtime has no int8 GRU or plain RNN: those stay float, and a line
    says so.

    Example:
        >>> int8_dynamic_onnx("minilm.onnx", "minilm-int8.onnx")  # doctest: +SKIP
    """
    q = require("onnxruntime.quantization", "onnx", "int8 quantization with ONNX Runtime")
    options = options or DynamicInt8Options()
    source = _existing(fp32_onnx)
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    with _quantizer_call("dynamic", source, out_path, options) as (model_in, _, out):
        q.quantize_dynamic(
            str(model_in),
            str(out),
            op_types_to_quantize=list(options.op_types_to_quantize or []) or None,
            per_channel=options.per_channel,
            reduce_range=_reduce_range(options.reduce_range),
            weight_type=types[options.weight_type],
            nodes_to_exclude=list(options.nodes_to_exclude),
            extra_options=dict(options.extra_options),
        )
        _say_what_stays_float(out)
    return Path(out_path)


_NO_DYNAMIC_INT8 = ("GRU", "RNN")  # recurrent ONNX ops that ONNX Runtime's quantizer leaves float


def _say_what_stays_float(path: Path) -> None:
    onnx = require("onnx", "onnx", "int8 quantization with ONNX Runtime")
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    for op in _NO_DYNAMIC_INT8:
        if op in ops:
            log(
                f"int8 dynamic: {ops.count(op)} {op} node(s) stay float (ONNX Runtime has no int8 "
                f"{op}); only LSTM, MatMul/Gemm and Attention get int8 weights"
            )


def fp16_onnx(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    keep_io_types: bool = True,
    op_block_list: Sequence[str] | None = None,
) -> Path:
    """Convert an fp32 ONNX model's weights and compute to fp16 (ONNX Runtime's converter).

    Half the file size. On x86 CPUs ONNX Runtime has few fp16 kernels and inserts casts around
    the others, so fp16 is mostly a size (or GPU) format there: measure before using it for speed.

    Args:
        fp32_onnx: The fp32 model.
        out_path: Where to write the fp16 model (atomically).
        keep_io_types: Keep fp32 inputs and outputs (callers keep feeding fp32 tensors).
        op_block_list: ONNX op types kept in fp32 (the converter's default list when ``None``).
    """
    onnx = require("onnx", "onnx", "fp16 conversion")
    float16 = require("onnxruntime.transformers.float16", "onnx", "fp16 conversion")
    model = onnx.load(str(_existing(fp32_onnx)))
    kwargs: dict[str, Any] = {"keep_io_types": keep_io_types}
    if op_block_list is not None:
        kwargs["op_block_list"] = list(op_block_list)
    half = float16.convert_float_to_float16(model, **kwargs)
    with atomic_path(out_path) as out:
        onnx.save(half, str(out))
    return Path(out_path)


# ---------------------------------------------------------------------------------------------
# Choosing the int8 format by measurement


@dataclass(frozen=True)
class Int8Candidate:
    """One int8 format to try: a name and the options of a static or dynamic quantization."""

    name: str
    options: StaticInt8Options | DynamicInt8Options
    description: str = ""

    @property
    def kind(self) -> str:
        return "static" if isinstance(self.options, StaticInt8Options) else "dynamic"


@dataclass(frozen=True)
class Int8Row:
    """One line of the candidate table; ratios are against the fp32 model of the same run.

    Speed-ups are fp32 time / candidate time (below 1: slower than fp32). ``passed`` says
    whether the fidelity reached the threshold; ``note`` says why not, or why the candidate
    could not be built.
    """

    name: str
    kind: str
    description: str
    path: Path | None
    size_bytes: int | None = None
    size_ratio: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_speedup: float | None = None
    throughput: float | None = None
    throughput_speedup: float | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    fidelity: float | None = None
    passed: bool = False
    quantize_seconds: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Int8Selection:
    """The fp32 baseline, every candidate measured, and the chosen one.

    Attributes:
        baseline: The fp32 model's row (ratios 1).
        rows: One row per candidate, in the order tried.
        best: The fastest candidate (by ``objective``) whose fidelity passed; ``None`` if none
            did. It may be slower than fp32: ``best.latency_speedup`` / ``throughput_speedup``
            say so, and :attr:`faster_than_fp32` is then ``False``.
    """

    baseline: Int8Row
    rows: list[Int8Row]
    best: Int8Row | None
    fidelity_name: str
    min_fidelity: float
    objective: str
    latency_batch: int
    throughput_batch: int
    threads: int
    eval_samples: int

    @property
    def faster_than_fp32(self) -> bool:
        if self.best is None:
            return False
        speedup = (
            self.best.throughput_speedup
            if self.objective == "throughput"
            else self.best.latency_speedup
        )
        return speedup is not None and speedup > 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the settings, the baseline, every row, and the name of the best."""
        return {
            "fidelity": self.fidelity_name,
            "min_fidelity": self.min_fidelity,
            "objective": self.objective,
            "latency_batch": self.latency_batch,
            "throughput_batch": self.throughput_batch,
            "threads": self.threads,
            "eval_samples": self.eval_samples,
            "baseline": _row_dict(self.baseline),
            "rows": [_row_dict(r) for r in self.rows],
            "best": self.best.name if self.best else None,
            "faster_than_fp32": self.faster_than_fp32,
        }

    def to_table(self) -> Table:
        """A rich table of the baseline and every candidate; the chosen one is marked."""
        title = (
            f"int8 candidates vs fp32 (ONNX Runtime, {self.threads} thread(s), "
            f"fidelity {self.fidelity_name} >= {self.min_fidelity:g})"
        )
        table = Table(title=title)
        columns = ("candidate", "size", f"speed-up b{self.latency_batch}",
                   f"speed-up b{self.throughput_batch}", "max err", self.fidelity_name,
                   "passed", "note")  # fmt: skip
        for col in columns:
            table.add_column(col, justify="left" if col in ("candidate", "note") else "right")
        for row in [self.baseline, *self.rows]:
            mark = " *" if self.best is not None and row.name == self.best.name else ""
            table.add_row(
                row.name + mark,
                _fmt(row.size_ratio, "x"),
                _fmt(row.latency_speedup, "x"),
                _fmt(row.throughput_speedup, "x"),
                _fmt(row.max_abs_error),
                _fmt(row.fidelity),
                "yes" if row.passed else "no",
                row.note,
            )
        return table


def cosine_fidelity(reference: Tensor, output: Tensor) -> float:
    """Mean cosine similarity of each sample's outputs to the fp32 outputs (1 is identical)."""
    a, b = reference.flatten(1).double(), output.flatten(1).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean())


def agreement_fidelity(reference: Tensor, output: Tensor) -> float:
    """Fraction of samples whose arg-max (predicted class) equals the fp32 model's."""
    return float((reference.argmax(-1) == output.argmax(-1)).double().mean())


_FIDELITIES: dict[str, Fidelity] = {"cosine": cosine_fidelity, "agreement": agreement_fidelity}


def default_int8_candidates(fp32_onnx: str | os.PathLike[str]) -> list[Int8Candidate]:
    """The int8 formats worth trying for this model: a CNN set or a transformer set.

    Models with integer inputs (token ids) or without convolutions get the transformer set
    (dynamic per-channel, also MatMul-only, also after ONNX Runtime's transformer fusions for
    token-id models, and per-tensor; static MatMul-only and static on every op); the others the
    CNN set (static U8S8 QDQ per-channel with and without 7-bit weights and per-tensor,
    S8S8 QDQ, U8S8 QOperator, dynamic).
    """
    onnx = require("onnx", "onnx", "reading an ONNX model")
    source = _existing(fp32_onnx)
    _, dtype, _ = _model_input(source)
    model = onnx.load(str(source), load_external_data=False)
    has_conv = any(node.op_type == "Conv" for node in model.graph.node)
    shallow = _shallow_convs(model)
    if np.issubdtype(dtype, np.integer) or not has_conv:
        return [
            Int8Candidate("dynamic-pc", DynamicInt8Options(),
                          "dynamic int8, per-channel weights (embeddings too)"),
            Int8Candidate("dynamic-pc-matmul", DynamicInt8Options(op_types_to_quantize=("MatMul",)),
                          "dynamic int8, per-channel weights, MatMul only (embeddings fp32)"),
            *([Int8Candidate("dynamic-pc-fused", DynamicInt8Options(transformer_fusions=True),
                             "ONNX Runtime's transformer fusions, then dynamic int8 per-channel "
                             "(QAttention: the Q/K/V projections in int8 too)")]
              if np.issubdtype(dtype, np.integer) else []),
            Int8Candidate("dynamic-pt", DynamicInt8Options(per_channel=False),
                          "dynamic int8, per-tensor weights"),
            Int8Candidate("static-u8s8-matmul",
                          StaticInt8Options(op_types_to_quantize=("MatMul",), calibration_batch=8),
                          "static QDQ U8S8, MatMul only, per-channel"),
            Int8Candidate("static-u8s8-all", StaticInt8Options(calibration_batch=8),
                          "static QDQ U8S8 on every op ONNX Runtime can quantize"),
        ]  # fmt: skip
    return [
        Int8Candidate("static-u8s8-qdq", StaticInt8Options(),
                      "static QDQ, uint8 activations, int8 per-channel weights "
                      "(7-bit where the CPU lacks VNNI)"),
        Int8Candidate("static-u8s8-qdq-8bit", StaticInt8Options(reduce_range=False),
                      "as static-u8s8-qdq with full 8-bit weights (saturates without VNNI)"),
        Int8Candidate("static-u8s8-qdq-pt", StaticInt8Options(per_channel=False),
                      "static QDQ, uint8 activations, int8 per-tensor weights"),
        *([Int8Candidate("static-u8s8-qdq-pt-deep",
                         StaticInt8Options(per_channel=False, nodes_to_exclude=shallow),
                         f"as static-u8s8-qdq-pt, {len(shallow)} shallow conv(s) (fewer than "
                         f"{_MIN_INT8_DEPTH} products per output) left in fp32")]
          if shallow else []),
        Int8Candidate("static-s8s8-qdq", StaticInt8Options(activation_type="int8"),
                      "static QDQ, int8 activations and weights (ONNX Runtime's default)"),
        Int8Candidate("static-u8s8-qop", StaticInt8Options(quant_format="qoperator"),
                      "static QOperator (QLinearConv), uint8 activations, int8 weights"),
        Int8Candidate("dynamic-pc", DynamicInt8Options(), "dynamic int8, per-channel weights"),
    ]  # fmt: skip


# An int8 dot-product kernel sums 4 (VNNI) or 2x2 (AVX2 pmaddubsw + pmaddwd) uint8 x int8 products
# per lane; a conv whose output sums fewer products than this (a 3x3 stem on one input channel
# sums 9) pays quantize/dequantize and padding for little arithmetic.
_MIN_INT8_DEPTH = 16


def _shallow_convs(model: Any) -> tuple[str, ...]:
    """Names of the Conv nodes whose outputs each sum fewer than ``_MIN_INT8_DEPTH`` products."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "Conv" else None
        if shape is not None and len(shape) >= 3 and math.prod(shape[1:]) < _MIN_INT8_DEPTH:
            names.append(node.name)
    return tuple(names)


def int8_candidates(
    fp32_onnx: str | os.PathLike[str],
    calibration_inputs: Tensor,
    eval_inputs: Tensor,
    out_dir: str | os.PathLike[str],
    *,
    candidates: Sequence[Int8Candidate] | None = None,
    fidelity: Fidelity | Literal["cosine", "agreement"] = "cosine",
    min_fidelity: float = 0.99,
    timing: ProfileConfig | None = None,
    objective: Literal["throughput", "latency"] = "throughput",
) -> Int8Selection:
    """Build several int8 variants, measure them here, and return the table and the best.

    Each candidate is quantized with ONNX Runtime's tools, run on ``eval_inputs`` to compare its
    outputs with the fp32 model's (max and mean absolute error, and the ``fidelity`` score), and
    timed against the fp32 model and the other candidates in interleaved blocks (batch
    ``timing.latency_batch`` and ``timing.throughput_batch``, ``timing.threads`` ONNX Runtime
    threads). Candidates that fail to quantize are listed with the error.

    Args:
        fp32_onnx: The fp32 ONNX model.
        calibration_inputs: Real samples for static calibration (a few hundred).
        eval_inputs: Real samples for the fidelity check (its first ones are also the timed
            batches).
        out_dir: Folder for the candidates' files (``NAME.onnx``) and the pre-processed fp32
            model they start from.
        candidates: The formats to try; default :func:`default_int8_candidates`.
        fidelity: ``fidelity(fp32_outputs, candidate_outputs) -> score`` (higher is better), or
            ``"cosine"`` (mean per-sample cosine) or ``"agreement"`` (same arg-max). A metric
            such as accuracy closes over the labels, e.g. ``lambda ref, out: acc(out) -
            acc(ref)`` with ``min_fidelity=-0.003``.
        min_fidelity: A candidate passes when its score is at least this.
        timing: Batch sizes, threads and time budget (``memory``/``energy`` are not used).
        objective: ``"throughput"`` picks the fastest at ``throughput_batch``, ``"latency"``
            at ``latency_batch``.

    Raises:
        DataError: The calibration or evaluation data is empty, not finite or misshapen.

    Example:
        >>> sel = int8_candidates("fp32.onnx", calib, test_x, "int8/")  # doctest: +SKIP
        >>> sel.best.name  # doctest: +SKIP
        'static-u8s8-qdq'
    """
    timing = timing or ProfileConfig()
    source = _existing(fp32_onnx)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name, dtype, shape = _model_input(source)
    _calibration_batches(eval_inputs, name, dtype, shape, len(eval_inputs) or 1)  # validate
    score, fidelity_name = _fidelity(fidelity)
    if objective not in ("throughput", "latency"):
        raise ConfigError(f"objective must be 'throughput' or 'latency', got {objective!r}.")
    chosen = list(candidates) if candidates is not None else default_int8_candidates(source)
    if len({c.name for c in chosen}) != len(chosen):
        raise ConfigError(f"candidate names must differ: {[c.name for c in chosen]}.")
    # Pre-process once (shape inference, basic graph optimizations): every candidate starts from
    # the same optimized graph, and a transformer is not re-optimized once per candidate.
    pre = out / f"{source.stem}.preprocessed.onnx"
    _preprocessed(source, out, target=pre)

    built: list[tuple[Int8Candidate, Path | None, float, str]] = []
    for cand in chosen:
        path = out / f"{cand.name}.onnx"
        log(f"int8 candidate {cand.name}: quantizing ({cand.description or cand.kind})")
        start = time.perf_counter()
        # Fusions match the exported graph, not the pre-processed one: those start from source.
        fused = getattr(cand.options, "transformer_fusions", False)
        options = cand.options.model_copy(update={"preprocess": fused})
        try:
            if isinstance(options, StaticInt8Options):
                int8_static_onnx(pre, calibration_inputs, path, options)
            else:
                int8_dynamic_onnx(source if fused else pre, path, options)
            built.append((cand, path, time.perf_counter() - start, ""))
        except DataError:
            raise
        except Exception as exc:  # one broken format must not hide the others
            built.append((cand, None, time.perf_counter() - start, _short(exc)))

    base_runner = OnnxRuntimeRunner(source, threads=timing.threads)
    runners: dict[str, OnnxRuntimeRunner] = {}
    notes: dict[str, str] = {}
    for cand, path, _, error in built:
        if path is None:
            notes[cand.name] = f"not built: {error}"
            continue
        try:
            runners[cand.name] = OnnxRuntimeRunner(path, threads=timing.threads)
        except Exception as exc:
            notes[cand.name] = f"does not load: {_short(exc)}"
    try:
        log(f"fidelity on {len(eval_inputs)} samples")
        reference = _outputs(base_runner, eval_inputs, timing.throughput_batch)
        errors: dict[str, tuple[float, float, float]] = {}
        for cand_name, runner in list(runners.items()):
            try:
                got = _outputs(runner, eval_inputs, timing.throughput_batch)
            except Exception as exc:
                notes[cand_name] = f"fails to run: {_short(exc)}"
                del runners[cand_name]
                continue
            diff = (got.double() - reference.double()).abs()
            finite = bool(torch.isfinite(got).all())
            value = float(score(reference, got)) if finite else float("nan")
            errors[cand_name] = (float(diff.max()), float(diff.mean()), value)
        times = _time_all([base_runner, *runners.values()], eval_inputs, timing)
    finally:
        for r in [base_runner, *runners.values()]:
            r.close()

    base_lat, base_thr = times[0]
    base_size = source.stat().st_size
    baseline = Int8Row(
        name="fp32", kind="fp32", description="the fp32 ONNX model", path=source,
        size_bytes=base_size, size_ratio=1.0, latency_p50_ms=base_lat.p50_ms,
        latency_p99_ms=base_lat.p99_ms, latency_speedup=1.0, throughput=base_thr,
        throughput_speedup=1.0, max_abs_error=0.0, mean_abs_error=0.0,
        fidelity=float(score(reference, reference)), passed=True,
    )  # fmt: skip
    timed = dict(zip(runners, times[1:], strict=True))
    rows = []
    for cand, path, seconds, _ in built:
        row = Int8Row(cand.name, cand.kind, cand.description, path, quantize_seconds=seconds,
                      note=notes.get(cand.name, ""))  # fmt: skip
        if cand.name in timed and path is not None:
            lat, thr = timed[cand.name]
            max_err, mean_err, value = errors[cand.name]
            passed = value >= min_fidelity  # NaN (non-finite outputs) never passes
            note = "" if passed else f"rejected: {fidelity_name} {value:.4g} < {min_fidelity:g}"
            size = path.stat().st_size
            row = Int8Row(
                cand.name, cand.kind, cand.description, path, size_bytes=size,
                size_ratio=size / base_size, latency_p50_ms=lat.p50_ms, latency_p99_ms=lat.p99_ms,
                latency_speedup=base_lat.p50_ms / lat.p50_ms, throughput=thr,
                throughput_speedup=thr / base_thr, max_abs_error=max_err, mean_abs_error=mean_err,
                fidelity=value, passed=passed, quantize_seconds=seconds, note=note,
            )  # fmt: skip
        rows.append(row)
    passing = [r for r in rows if r.passed]
    key = (lambda r: r.throughput) if objective == "throughput" else (lambda r: -r.latency_p50_ms)
    best = max(passing, key=key) if passing else None
    if best is not None and (best.throughput_speedup or 0) < 1 and (best.latency_speedup or 0) < 1:
        log(
            f"int8 is slower than fp32 here: the best passing candidate, {best.name}, runs at "
            f"{best.latency_speedup:.2f}x / {best.throughput_speedup:.2f}x the fp32 speed"
        )
    return Int8Selection(
        baseline=baseline, rows=rows, best=best, fidelity_name=fidelity_name,
        min_fidelity=min_fidelity, objective=objective, latency_batch=timing.latency_batch,
        throughput_batch=timing.throughput_batch, threads=timing.threads,
        eval_samples=len(eval_inputs),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Helpers


class _BatchReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a list of numpy batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self._start, self._end, self._next = 0, len(batches), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        batch = self.batches[self._next]
        self._next += 1
        return {self.input_name: batch}

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        # Used by ONNX Runtime's strided min-max calibration (CalibStridedMinMax).
        self._start, self._end = start_index, min(end_index, len(self.batches))
        self._next = self._start

    def rewind(self) -> None:
        self._next = self._start


def cpu_needs_reduce_range() -> bool:
    """Whether 8-bit weights risk saturating ONNX Runtime's uint8 x int8 kernels on this CPU.

    True on x86 CPUs without VNNI (``avx512_vnni`` or ``avx_vnni``): their kernels add pairs of
    uint8 x int8 products in 16-bit lanes (``vpmaddubsw``), which overflow with full-range
    weights and activations. False with VNNI, on ARM, and when the flags cannot be read.
    """
    _, flags = _read_cpuinfo()
    x86 = "sse2" in flags or "avx2" in flags
    return x86 and not ({"avx512_vnni", "avx_vnni"} & flags)


def _reduce_range(setting: bool | None) -> bool:
    return cpu_needs_reduce_range() if setting is None else setting


@contextlib.contextmanager
def _quantizer_call(
    kind: str, source: Path, out_path: str | os.PathLike[str], options: Config
) -> Iterator[tuple[Path, Path, Path]]:
    """Scratch folder, ORT's pre-processing, an atomic output, and one error for any failure.

    Yields ``(model to quantize, scratch folder, temporary output path)``; the output replaces
    ``out_path`` only when the quantizer succeeded.
    """
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as scratch:
        tmp = Path(scratch)
        model_in = source
        if getattr(options, "transformer_fusions", False):
            model_in = _transformer_fused(source, tmp)
        if getattr(options, "preprocess", True):
            model_in = _preprocessed(model_in, tmp)
        with atomic_path(out_path) as out:
            try:
                yield model_in, tmp, out
            except Exception as exc:
                raise ConfigError(
                    f"ONNX Runtime's {kind} quantization of {source.name} failed with "
                    f"{options}: {type(exc).__name__}: {exc}"
                ) from exc


def _transformer_fused(source: Path, tmp_dir: Path) -> Path:
    from slimkit.compile._ort_fusions import transformer_fused

    fused = transformer_fused(source, tmp_dir / f"{source.stem}.fused.onnx")
    if fused is None:
        raise ConfigError(
            f"none of ONNX Runtime's transformer fusions matches {source.name} (it needs token-id "
            "inputs and attention blocks); quantize it with transformer_fusions=False."
        )
    return fused


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no ONNX file at {p}.")
    return p


def _model_input(path: Path) -> tuple[str, Any, list[int | None]]:
    """Name, numpy dtype and shape (``None`` for dynamic dims) of the model's single input."""
    onnx = require("onnx", "onnx", "reading an ONNX model")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(
            f"{path.name} has {len(inputs)} inputs; int8 lowering calibrates models with one input."
        )
    tensor_type = inputs[0].type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return inputs[0].name, dtype, dims


def _calibration_batches(
    data: Tensor | Iterable[Tensor],
    input_name: str,
    dtype: Any,
    shape: list[int | None],
    batch_size: int,
) -> list[np.ndarray]:
    if isinstance(data, Tensor):
        tensors = [data]
    else:
        tensors = list(data)
        if any(not isinstance(t, Tensor) for t in tensors):
            raise DataError("calibration inputs must be tensors (one, or a sequence of batches).")
    if not tensors or all(t.numel() == 0 for t in tensors):
        raise DataError(
            "calibration needs real samples and got none: pass a few hundred inputs shaped like "
            f"the model's input {input_name!r} {_shape_str(shape)}."
        )
    for t in tensors:
        if t.dim() != len(shape) or any(
            want is not None and want != got for want, got in zip(shape, t.shape, strict=False)
        ):
            raise DataError(
                f"calibration inputs of shape {tuple(t.shape)} do not fit the model's input "
                f"{input_name!r} of shape {_shape_str(shape)} (dynamic dims shown as '?')."
            )
    x = torch.cat([t.detach().cpu() for t in tensors]) if len(tensors) > 1 else tensors[0]
    integer_model = np.issubdtype(dtype, np.integer)
    if integer_model and x.is_floating_point():
        raise DataError(
            f"the model's input {input_name!r} takes integers (token ids), but the calibration "
            f"inputs are {x.dtype}."
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(
            f"calibration inputs hold {bad} NaN or infinite values; activation ranges would be "
            "meaningless. Clean the samples first."
        )
    array = x.detach().cpu().numpy().astype(dtype, copy=False)
    return [array[i : i + batch_size] for i in range(0, len(array), batch_size)]


def _shape_str(shape: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _preprocessed(source: Path, tmp_dir: Path, target: Path | None = None) -> Path:
    """``quant_pre_process`` of ``source`` (shape inference + basic graph optimizations)."""
    q = require("onnxruntime.quantization", "onnx", "int8 quantization with ONNX Runtime")
    # Absolute paths: the pre-processing runs in a scratch working directory.
    source = source.resolve()
    target = (target or tmp_dir / f"{source.stem}.preprocessed.onnx").resolve()
    with (
        atomic_path(target) as out,
        tempfile.TemporaryDirectory(prefix="slimkit-prep-") as scratch,
        _working_directory(Path(scratch)),
    ):
        # When symbolic shape inference fails, ONNX Runtime saves its partial model (and a side
        # file with all the weights, 90 MB for MiniLM) into the working directory: a scratch
        # folder keeps that out of the user's.
        src, dst = str(source), str(out)
        try:
            # auto_merge reconciles dims such as min(512, sequence) vs sequence in transformers.
            q.quant_pre_process(src, dst, auto_merge=True)
        except Exception as exc:
            # Symbolic shape inference does not know every op; ONNX's own inference still runs.
            log(f"symbolic shape inference failed ({_short(exc)}); pre-processing without it")
            q.quant_pre_process(src, dst, skip_symbolic_shape=True)
    return target


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _histogram_ranges(
    model: Path,
    reader: _BatchReader,
    options: StaticInt8Options,
    op_types: list[str] | None,
    methods: dict[str, Any],
    tmp_dir: Path,
    cache: Path,
) -> None:
    """Activation ranges from ONNX Runtime's histogram calibrators, saved as its range cache."""
    q = require("onnxruntime.quantization", "onnx", "int8 quantization with ONNX Runtime")
    registry = require("onnxruntime.quantization.registry", "onnx", "int8 quantization")
    if op_types is None:  # what quantize_static calibrates by default
        op_types = sorted(set(registry.QLinearOpsRegistry) | set(registry.QDQRegistry))
    settings: dict[str, Any] = {"num_bins": options.num_bins}
    if options.calibrate_method == "percentile":
        settings["percentile"] = options.percentile
    if "CalibTensorRangeSymmetric" in options.extra_options:
        settings["symmetric"] = options.extra_options["CalibTensorRangeSymmetric"]
    # ONNX Runtime's calibrators print their progress; slimkit's output stays readable.
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator = q.create_calibrator(
            model,
            op_types,
            augmented_model_path=str(tmp_dir / "augmented.onnx"),
            calibrate_method=methods[options.calibrate_method],
            extra_options=settings,
        )
        try:
            calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
        finally:
            del calibrator
    q.save_tensors_data(ranges, cache)


def _fidelity(fidelity: Fidelity | str) -> tuple[Fidelity, str]:
    if isinstance(fidelity, str):
        if fidelity not in _FIDELITIES:
            raise ConfigError(
                f"fidelity must be a callable or one of {sorted(_FIDELITIES)}, got {fidelity!r}."
            )
        return _FIDELITIES[fidelity], fidelity
    if not callable(fidelity):
        raise ConfigError(f"fidelity must be callable, got {type(fidelity).__name__}.")
    return fidelity, getattr(fidelity, "__name__", "fidelity")


def _outputs(runner: OnnxRuntimeRunner, inputs: Tensor, batch: int) -> Tensor:
    return torch.cat([runner(x) for x in inputs.split(batch)])


def _time_all(
    runners: Sequence[OnnxRuntimeRunner], inputs: Tensor, timing: ProfileConfig
) -> list[tuple[Any, float]]:
    """(latency stats at the latency batch, samples/s at the throughput batch) per runner."""
    common = {"warmup": timing.warmup, "min_runs": timing.min_runs,
              "max_seconds": timing.max_seconds, "rounds": COMPARE_ROUNDS}  # fmt: skip
    log(f"timing {len(runners)} ONNX Runtime models at batch {timing.latency_batch}")
    lat = time_interleaved(runners, _repeat(inputs, timing.latency_batch), **common)
    log(f"timing {len(runners)} ONNX Runtime models at batch {timing.throughput_batch}")
    thr = time_interleaved(runners, _repeat(inputs, timing.throughput_batch), **common)
    return [(a.stats, b.samples_per_second) for a, b in zip(lat, thr, strict=True)]


def _repeat(x: Tensor, size: int) -> Tensor:
    reps = math.ceil(size / len(x))
    return x.repeat(reps, *[1] * (x.dim() - 1))[:size].contiguous()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3g}{unit}"


def _row_dict(row: Int8Row) -> dict[str, Any]:
    out = asdict(row)
    out["path"] = str(row.path) if row.path else None
    return out
