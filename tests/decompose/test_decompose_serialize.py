"""Modules replaced by trees of plain torch.nn layers are saved as data and rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.errors import SerializationError
from slimkit.models import create_model
from slimkit.serialize import SPEC_FILE, load_model, save_model


def _factorized_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("fmnist_cnn").eval()
    model[7] = nn.Sequential(nn.Linear(64 * 7 * 7, 32, bias=False), nn.Linear(32, 1024))
    model[3] = nn.Sequential(
        nn.Conv2d(32, 8, 1, bias=False),
        nn.Conv2d(8, 8, (5, 1), padding=(2, 0), groups=8, bias=False),
        nn.Conv2d(8, 8, (1, 5), padding=(0, 2), groups=8, bias=False),
        nn.Conv2d(8, 64, 1),
    )
    return model


def test_replaced_modules_round_trip_as_data(tmp_path: Path, fmnist_small) -> None:
    model = _factorized_cnn()
    folder = save_model(model, tmp_path / "m")
    replaced = json.loads((folder / SPEC_FILE).read_text())["structure"]["replaced"]
    assert set(replaced) == {"3", "7"}
    assert replaced["3"]["type"] == "Sequential"
    assert replaced["3"]["children"]["1"] == {
        "type": "Conv2d",
        "args": {
            "in_channels": 8,
            "out_channels": 8,
            "kernel_size": [5, 1],
            "stride": [1, 1],
            "padding": [2, 0],
            "dilation": [1, 1],
            "groups": 8,
            "padding_mode": "zeros",
            "bias": False,
        },
        "children": {},
    }
    again = load_model(folder)
    x = fmnist_small.test_inputs[:16]
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again[3][1].groups == 8 and again[3][1].kernel_size == (5, 1)


def test_unchanged_models_record_no_replacement(tmp_path: Path) -> None:
    folder = save_model(create_model("fmnist_tiny"), tmp_path / "t")
    assert json.loads((folder / SPEC_FILE).read_text())["structure"]["replaced"] == {}


def test_replacement_with_other_layers_is_refused(tmp_path: Path) -> None:
    model = create_model("fmnist_cnn")
    model[7] = nn.Sequential(nn.Linear(64 * 7 * 7, 32), nn.GELU(), nn.Linear(32, 1024))
    with pytest.raises(SerializationError, match="plain layers"):
        save_model(model, tmp_path / "m")


def test_decomposed_then_quantized_model_round_trips(tmp_path: Path, fmnist_small) -> None:
    from slimkit.decompose import DecomposeConfig, decompose
    from slimkit.quantize import QuantConfig, quantize

    model = create_model("fmnist_tiny").eval()
    config = DecomposeConfig(method="cp", layers=("6", "11"), speed_gate=False, cp_iterations=5)
    factorized = decompose(model, config, fmnist_small.example_input(1))
    quantized = quantize(factorized, QuantConfig(calibration_samples=32), fmnist_small)
    assert type(quantized[6][1]).__name__ == "QuantConv2d" and quantized[6][1].groups > 1
    again = load_model(save_model(quantized, tmp_path / "q"))
    x = fmnist_small.test_inputs[:16]
    with torch.no_grad():
        assert torch.equal(quantized.eval()(x), again(x))
