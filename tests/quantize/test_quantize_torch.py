"""slimkit.quantize on real models and real Fashion-MNIST: int8 static/dynamic/QAT, fp16/bf16."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.data import DataSplits
from slimkit.errors import ConfigError, DataError
from slimkit.measure import accuracy
from slimkit.models import create_model
from slimkit.quantize import (
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    is_quantized,
    quantizable_layers,
    quantize,
    sensitivity,
)
from slimkit.serialize import SPEC_FILE, load_model, save_model
from slimkit.train import TrainConfig, train

FAST = {"calibration_samples": 256, "validation_samples": 500}


@pytest.fixture(scope="module")
def resnet(fmnist_small: DataSplits) -> nn.Module:
    """A small ResNet trained for 2 epochs on 2,000 real images."""
    torch.manual_seed(0)
    model = create_model("fmnist_resnet", widths=[8, 16, 32])
    config = TrainConfig(epochs=2, lr=0.1, batch_size=64, threads=1, augment=False)
    return train(model, config, fmnist_small).model.eval()


@pytest.fixture(scope="module")
def resnet_accuracy(resnet, fmnist_small: DataSplits) -> float:
    return accuracy(resnet, fmnist_small.test_loader())


def conv_and_linear(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def quantized_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if is_quantized(m)]


def test_int8_static_keeps_the_accuracy(resnet, resnet_accuracy, fmnist_small) -> None:
    assert resnet_accuracy > 0.6
    q = quantize(resnet, QuantConfig(**FAST), fmnist_small)
    layers = conv_and_linear(resnet)
    assert layers[0] == "stem.0" and layers[-1] == "fc" and len(layers) >= 10
    assert quantized_layers(q) == layers and quantizable_layers(resnet) == layers
    assert isinstance(q.stem[0], QuantConv2d) and isinstance(q.fc, QuantLinear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())  # folded
    conv = q.stages[1][0].conv1
    assert conv.weight_scale.shape == (16,) and conv.weight_zero_point.tolist() == [0] * 16
    assert (conv.weight_quant_min, conv.weight_quant_max) == (-127, 127)
    assert (conv.input_quant_min, conv.input_quant_max) == (0, 255)
    # Its input follows a ReLU: an asymmetric uint8 range puts the zero point at 0.
    assert int(conv.input_zero_point) == 0 and float(conv.input_scale) > 0
    # The image input is negative too: its zero point is inside the range.
    assert 0 < int(q.stem[0].input_zero_point) < 255
    drop = resnet_accuracy - accuracy(q, fmnist_small.test_loader())
    assert drop < 0.01, drop
    record = q.slimkit_quantization
    assert record["quantized_layers"] == layers and record["float_layers"] == []
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert (
        len(record["folded_batchnorms"]) == norms == len(layers) - 1
        and record["calibration_samples"] == 256
    )
    assert record["output_error"]["top1_agreement"] > 0.97
    assert not hasattr(resnet, "slimkit_quantization") and not quantized_layers(resnet)


@pytest.mark.parametrize("observer", ["moving_average", "percentile", "entropy", "mse"])
def test_every_observer_calibrates_a_working_model(
    observer, resnet, resnet_accuracy, fmnist_small
) -> None:
    config = QuantConfig(observer=observer, weight_observer=observer, **FAST)
    q = quantize(resnet, config, fmnist_small)
    assert resnet_accuracy - accuracy(q, fmnist_small.test_loader()) < 0.02


def test_skip_keeps_layers_in_float(resnet, fmnist_small) -> None:
    q = quantize(resnet, QuantConfig(skip=("fc", "stages.2"), **FAST), fmnist_small)
    assert type(q.fc) is nn.Linear and type(q.stages[2][0].conv1) is nn.Conv2d
    assert quantized_layers(q) == [
        n for n in conv_and_linear(resnet) if n.startswith(("stem", "stages.0", "stages.1"))
    ]
    assert {"layer": "fc", "reason": "skip"} in q.slimkit_quantization["float_layers"]
    with pytest.raises(ConfigError, match=r"did you mean 'fc'"):
        quantize(resnet, QuantConfig(skip=("fcc",)), fmnist_small)


def test_dynamic_needs_no_data_and_stays_close(resnet, resnet_accuracy, fmnist_small) -> None:
    q = quantize(resnet, QuantConfig(method="dynamic"))
    assert all(q.get_submodule(n).dynamic for n in quantized_layers(q))
    assert q.slimkit_quantization["calibration_samples"] == 0
    assert resnet_accuracy - accuracy(q, fmnist_small.test_loader()) < 0.02


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_half_precision_copies(dtype, torch_dtype, resnet, resnet_accuracy, fmnist_small) -> None:
    half = quantize(resnet, QuantConfig(dtype=dtype, **FAST), fmnist_small)
    assert {p.dtype for p in half.parameters()} == {torch_dtype}
    x = fmnist_small.test_inputs[:8]
    assert half(x).dtype == torch.float32
    error = half.slimkit_quantization["output_error"]
    assert error["top1_agreement"] > 0.97 and error["max_abs_error"] < 0.5
    assert resnet_accuracy - accuracy(half, fmnist_small.test_loader()) < 0.01
    assert next(resnet.parameters()).dtype == torch.float32


def test_bad_calibration_data_is_refused_before_any_work(resnet, fmnist_small) -> None:
    def variant(**changes) -> DataSplits:
        fields = {f.name: getattr(fmnist_small, f.name) for f in dataclasses.fields(fmnist_small)}
        fields.pop("input_shape")
        return DataSplits(**{**fields, **changes})

    with pytest.raises(ConfigError, match="needs data="):
        quantize(resnet, QuantConfig())
    empty = variant(
        train_inputs=fmnist_small.train_inputs[:0], train_labels=fmnist_small.train_labels[:0]
    )
    with pytest.raises(DataError, match="empty"):
        quantize(resnet, QuantConfig(), empty)
    broken = fmnist_small.train_inputs.clone()
    broken[::7, 0, 3, 3] = float("nan")
    broken[1, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN or infinite"):
        quantize(resnet, QuantConfig(), variant(train_inputs=broken))
    wide = torch.nn.functional.pad(fmnist_small.train_inputs, (2, 2, 2, 2))
    with pytest.raises(DataError, match=r"\(1, 32, 32\) but the model takes \(1, 28, 28\)"):
        quantize(resnet, QuantConfig(), variant(train_inputs=wide))
    with pytest.raises(DataError, match="no samples left"):
        quantize(resnet, QuantConfig(calibration_samples=5000, accuracy_budget=0.01), fmnist_small)


def test_sensitivity_rows(resnet, fmnist_small) -> None:
    config = QuantConfig(weight_bits=4, **FAST)
    rows = sensitivity(resnet, config, fmnist_small)
    assert [r.layer for r in rows] == conv_and_linear(resnet)
    assert {r.kind for r in rows} == {"Conv2d", "Linear"}
    assert all(r.output_mse > 0 and -1 <= r.accuracy_drop <= 1 for r in rows)
    assert json.dumps([r.to_dict() for r in rows])  # plain data, for the report


def test_mixed_precision_meets_the_budget(resnet, fmnist_small) -> None:
    config = QuantConfig(weight_bits=2, accuracy_budget=0.01, **FAST)
    q = quantize(resnet, config, fmnist_small)
    record = q.slimkit_quantization
    mixed = record["mixed_precision"]
    assert mixed["met"] and mixed["accuracy_drop"] <= 0.01
    kept = [entry["layer"] for entry in record["float_layers"]]
    assert kept and all("sensitive" in entry["reason"] for entry in record["float_layers"])
    assert sorted(kept + record["quantized_layers"]) == sorted(conv_and_linear(resnet))
    for name in kept:
        assert not is_quantized(q.get_submodule(name))
    assert mixed["steps"][0]["accuracy_drop"] > 0.01  # 2-bit weights everywhere: too much


def test_quantized_model_saves_and_reloads_without_pickle(
    tmp_path: Path, resnet, fmnist_small
) -> None:
    q = quantize(resnet, QuantConfig(**FAST), fmnist_small)
    folder = save_model(q, tmp_path / "int8")
    structure = json.loads((folder / SPEC_FILE).read_text())["structure"]
    assert structure["module_types"]["stem.0"] == "QuantConv2d"
    assert structure["module_types"]["fc"] == "QuantLinear"
    assert structure["added"]["stem.0.bias"]["kind"] == "parameter"  # created by folding
    assert structure["added"]["fc.weight_zero_point"] == {
        "shape": [10],
        "dtype": "int32",
        "kind": "buffer",
    }
    assert structure["attributes"]["stem.0"]["input_quant_max"] == 255
    again = load_model(folder)
    assert quantized_layers(again) == conv_and_linear(resnet)
    assert isinstance(again.stem[0], QuantConv2d) and again.stem[0].weight_quant_min == -127
    x = fmnist_small.test_inputs[:64]
    assert torch.equal(q(x), again(x))


def test_half_model_saves_and_reloads(tmp_path: Path, resnet, fmnist_small) -> None:
    half = quantize(resnet, QuantConfig(dtype="bf16"))
    again = load_model(save_model(half, tmp_path / "bf16"))
    assert again.fc.weight.dtype == torch.bfloat16
    x = fmnist_small.test_inputs[:16]
    out = again(x)
    assert out.dtype == torch.float32 and torch.equal(out, half(x))
