"""Fake-quantized layers: hand-computed numerics, straight-through gradients, conversions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.errors import ConfigError
from slimkit.quantize import QuantConv1d, QuantConv2d, QuantLinear, is_quantized, qparams_from_range


def fake(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """The textbook quantize-dequantize, written out."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def linear_layer(weights: list[list[float]], bias: bool = False) -> nn.Linear:
    layer = nn.Linear(len(weights[0]), len(weights), bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights))
        if bias:
            layer.bias.zero_()
    return layer


def test_linear_by_hand() -> None:
    layer = linear_layer([[0.5, -0.26], [0.04, 1.0]])
    q = QuantLinear.from_float(
        layer,
        weight_scale=torch.tensor([0.1, 0.02]),
        weight_zero_point=torch.tensor([0, 0]),
        weight_range=(-127, 127),
        input_scale=torch.tensor(0.5),
        input_zero_point=torch.tensor(2),
        input_range=(0, 255),
    )
    # Row 0 on a 0.1 grid: 0.5, -0.3. Row 1 on a 0.02 grid: 0.04, 1.0.
    expected_weight = torch.tensor([[0.5, -0.3], [0.04, 1.0]])
    assert torch.allclose(q.quantized_weight(), expected_weight, atol=1e-7)
    # Inputs on a 0.5 grid with zero point 2: 1.2 -> 1.0, -0.7 -> -0.5, -3.0 clamps at q=0: -1.0.
    x = torch.tensor([[1.2, -0.7], [-3.0, 0.0]])
    assert q.quantized_input(x).tolist() == [[1.0, -0.5], [-1.0, 0.0]]
    expected = torch.tensor([[1.0 * 0.5 + 0.5 * 0.3, 0.04 - 0.5], [-0.5, -0.04]])
    assert torch.allclose(q(x), expected, atol=1e-6)


def test_gradients_pass_straight_through_inside_the_range_only() -> None:
    layer = linear_layer([[0.5, 20.0]])  # 20.0 / 0.1 = 200: beyond 127, clamped
    q = QuantLinear.from_float(
        layer, weight_scale=torch.tensor([0.1]), weight_zero_point=torch.tensor([0]),
        weight_range=(-127, 127), input_scale=torch.tensor(0.1),
        input_zero_point=torch.tensor(0), input_range=(0, 255),
    )  # fmt: skip
    x = torch.tensor([[2.0, -1.0]], requires_grad=True)  # -1.0 is below uint8's 0: clamped
    q(x).sum().backward()
    assert layer.weight.grad.tolist() == [[2.0, 0.0]]  # d/dw = x, zero where w is clamped
    assert torch.allclose(x.grad, torch.tensor([[0.5, 0.0]]))  # d/dx = w_q, zero where x is clamped


def test_conv2d_matches_the_written_out_formula_per_channel() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    weight_scale = conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127
    input_scale, input_zp = qparams_from_range(-1.5, 2.0, 0, 255)
    q = QuantConv2d.from_float(
        conv, weight_scale=weight_scale, weight_zero_point=torch.zeros(4, dtype=torch.int32),
        weight_range=(-127, 127), input_scale=input_scale, input_zero_point=input_zp,
        input_range=(0, 255),
    )  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    w = fake(conv.weight.detach(), weight_scale.view(4, 1, 1, 1), 0, -127, 127)
    xq = fake(x, input_scale, input_zp, 0, 255)
    expected = nn.functional.conv2d(xq, w, conv.bias, padding=1)
    assert torch.allclose(q(x), expected, atol=1e-5)
    assert isinstance(q, nn.Conv2d) and is_quantized(q) and not is_quantized(conv)
    assert list(q.state_dict()) == [
        "weight", "bias", "weight_scale", "weight_zero_point", "input_scale", "input_zero_point"
    ]  # fmt: skip
    assert q.weight is conv.weight and q.input_scale.ndim == 0
    back = q.to_float()
    assert type(back) is nn.Conv2d and back.weight is conv.weight and back.padding == (1, 1)
    assert torch.equal(back(x), conv(x))


def test_conv1d_and_per_tensor_weights() -> None:
    torch.manual_seed(1)
    conv = nn.Conv1d(2, 3, 5, stride=2, bias=False)
    q = QuantConv1d.from_float(
        conv, weight_scale=torch.tensor(0.01), weight_zero_point=torch.tensor(0),
        weight_range=(-127, 127), input_scale=torch.tensor(0.05),
        input_zero_point=torch.tensor(128), input_range=(0, 255),
    )  # fmt: skip
    x = torch.randn(2, 2, 20)
    expected = nn.functional.conv1d(
        fake(x, 0.05, 128, 0, 255), fake(conv.weight.detach(), 0.01, 0, -127, 127), stride=2
    )
    assert q.weight_scale.ndim == 0 and torch.allclose(q(x), expected, atol=1e-6)


def test_dynamic_inputs_use_each_batch_range() -> None:
    layer = linear_layer([[1.0]])
    q = QuantLinear.from_float(
        layer, weight_scale=torch.tensor([1 / 127]), weight_zero_point=torch.tensor([0]),
        weight_range=(-127, 127), input_range=(0, 255), dynamic=True,
    )  # fmt: skip
    for top in (2.55, 25.5):  # scale 0.01, then 0.1
        x = torch.tensor([[0.0], [top], [0.123 * top]])
        s = top / 255
        assert torch.allclose(q(x), fake(x, s, 0, 0, 255), atol=1e-6)


def test_from_float_checks_its_arguments() -> None:
    with pytest.raises(ConfigError, match="takes a Conv2d"):
        QuantConv2d.from_float(
            nn.Linear(2, 2), weight_scale=torch.ones(2), weight_zero_point=torch.zeros(2),
            weight_range=(-127, 127), input_scale=torch.tensor(1.0),
            input_zero_point=torch.tensor(0),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="input_scale"):
        QuantLinear.from_float(
            nn.Linear(2, 2), weight_scale=torch.ones(2), weight_zero_point=torch.zeros(2),
            weight_range=(-127, 127),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="one per output"):
        QuantLinear.from_float(
            nn.Linear(2, 3), weight_scale=torch.ones(2), weight_zero_point=torch.zeros(2),
            weight_range=(-127, 127), dynamic=True,
        )  # fmt: skip
