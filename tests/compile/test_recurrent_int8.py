"""Dynamic int8 of recurrent models in ONNX Runtime: LSTM gets int8 weights, GRU stays float."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from torch import nn

from slimkit._runtime import set_progress
from slimkit.compile import OnnxRuntimeRunner, export_onnx
from slimkit.data import DataSplits
from slimkit.models import create_model
from slimkit.quantize import int8_dynamic_onnx
from slimkit.train import TrainConfig, train


def _trained(cell: str, data: DataSplits) -> nn.Module:
    """fmnist_rnn after 4 epochs on 2,000 real images (about 75 % test accuracy)."""
    config = TrainConfig(
        epochs=4, lr=0.01, optimizer="adamw", batch_size=64, threads=1, augment=False
    )
    return train(create_model("fmnist_rnn", cell=cell), config, data).model.eval()


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _accuracy(runner: OnnxRuntimeRunner, data: DataSplits) -> float:
    predictions = runner(data.test_inputs).argmax(1)
    return float((predictions == data.test_labels).float().mean())


def test_lstm_weights_become_int8_and_the_accuracy_stays(
    fmnist_small: DataSplits, tmp_path: Path
) -> None:
    model = _trained("lstm", fmnist_small)
    fp32 = export_onnx(model, fmnist_small.test_inputs[:4], tmp_path / "lstm.onnx")
    int8 = int8_dynamic_onnx(fp32, tmp_path / "lstm-int8.onnx")
    ops = _ops(int8)
    assert ops.count("DynamicQuantizeLSTM") == 1 and "LSTM" not in ops
    assert int8.stat().st_size <= 0.35 * fp32.stat().st_size
    with OnnxRuntimeRunner(fp32) as float_runner, OnnxRuntimeRunner(int8) as int8_runner:
        float_accuracy = _accuracy(float_runner, fmnist_small)
        int8_accuracy = _accuracy(int8_runner, fmnist_small)
    assert float_accuracy >= 0.65  # it learned: chance is 0.10
    assert abs(int8_accuracy - float_accuracy) <= 0.01  # 1,000 real test images


def test_gru_stays_float_and_the_log_says_so(
    fmnist_small: DataSplits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = create_model("fmnist_rnn", cell="gru").eval()
    fp32 = export_onnx(model, fmnist_small.test_inputs[:4], tmp_path / "gru.onnx")
    set_progress(True)
    try:
        int8 = int8_dynamic_onnx(fp32, tmp_path / "gru-int8.onnx")
    finally:
        set_progress(False)
    assert _ops(int8).count("GRU") == 1
    assert "1 GRU node(s) stay float (ONNX Runtime has no int8 GRU)" in capsys.readouterr().err
    # Only the small head became int8: the GRU's float weights are most of the file.
    assert int8.stat().st_size >= 0.9 * fp32.stat().st_size
