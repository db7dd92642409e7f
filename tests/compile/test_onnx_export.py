"""ONNX export: real models, dynamic axes, the checker, and the check against PyTorch."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import Tensor, nn

from slimkit.compile._onnx import OnnxExportError, export_onnx
from slimkit.compile._ort import OnnxRuntimeRunner
from slimkit.data import DataSplits
from slimkit.errors import ConfigError


def _input_dims(path: Path) -> list[str | int]:
    model = onnx.load(str(path))
    [inp] = model.graph.input
    return [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]


def test_fp32_resnet_onnx_equals_pytorch_at_other_batch_sizes(
    trained_resnet: nn.Module, resnet_onnx: Path, fmnist_small: DataSplits
) -> None:
    assert _input_dims(resnet_onnx) == ["batch", 1, 28, 28]
    with OnnxRuntimeRunner(resnet_onnx) as runner, torch.inference_mode():
        for batch in (1, 7, 256):  # exported at batch 4: the batch axis is really dynamic
            x = fmnist_small.test_inputs[:batch]
            got, want = runner(x), trained_resnet(x)
            assert got.shape == (batch, 10)
            assert float((got - want).abs().max()) <= 1e-4


def test_torchscript_exporter_also_works(
    trained_resnet: nn.Module, fmnist_small: DataSplits, tmp_path: Path
) -> None:
    path = export_onnx(
        trained_resnet, fmnist_small.example_input(1), tmp_path / "ts.onnx", exporter="torchscript"
    )
    assert _input_dims(path)[0] == "batch"
    x = fmnist_small.test_inputs[:9]
    with OnnxRuntimeRunner(path) as runner, torch.inference_mode():
        assert float((runner(x) - trained_resnet(x)).abs().max()) <= 1e-4


class _BagOfWords(nn.Module):
    """A real (tiny) token model: embedding, mean over non-padding tokens, linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(1000, 16, padding_idx=0)
        self.head = nn.Linear(16, 4)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).unsqueeze(-1).float()
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def test_token_inputs_get_dynamic_batch_and_sequence_axes(tmp_path: Path) -> None:
    model = _BagOfWords().eval()
    ids = torch.randint(1, 1000, (1, 128))  # batch 1 at export: widened internally
    path = export_onnx(model, ids, tmp_path / "bow.onnx")
    assert _input_dims(path) == ["batch", "sequence"]
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.name == "input_ids"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
    with OnnxRuntimeRunner(path) as runner, torch.inference_mode():
        for shape in ((3, 128), (2, 17)):
            x = torch.randint(0, 1000, shape)
            assert float((runner(x) - model(x)).abs().max()) <= 1e-5


def test_a_mismatch_is_an_error_naming_the_difference_and_writes_nothing(tmp_path: Path) -> None:
    class Noisy(nn.Module):  # ONNX Runtime draws other random numbers than PyTorch
        def forward(self, x: Tensor) -> Tensor:
            return x + torch.randn_like(x)

    target = tmp_path / "noisy.onnx"
    with pytest.raises(OnnxExportError, match=r"max abs difference \d"):
        export_onnx(Noisy(), torch.zeros(2, 8), target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="dynamic_axes names dim 3"):
        export_onnx(model, torch.zeros(2, 4), tmp_path / "m.onnx", dynamic_axes={3: "x"})
    with pytest.raises(ConfigError, match="at least one sample"):
        export_onnx(model, torch.zeros(0, 4), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="exporter must be"):
        export_onnx(model, torch.zeros(2, 4), tmp_path / "m.onnx", exporter="tflite")  # type: ignore[arg-type]


def test_static_batch_when_asked(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    path = export_onnx(model, torch.randn(5, 4), tmp_path / "static.onnx", dynamic_batch=False)
    assert _input_dims(path) == [5, 4]
