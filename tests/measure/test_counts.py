"""Parameter and MAC counts against numbers computed by hand."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimkit.measure import count_macs, count_params
from slimkit.models import create_model


def conv_macs(c_out: int, c_in: int, groups: int, k: int, h_out: int, w_out: int) -> int:
    return c_out * (c_in // groups) * k * k * h_out * w_out


def test_grouped_strided_conv() -> None:
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3)
    x = torch.randn(1, 6, 9, 9)
    h_out = (9 + 2 * 1 - 3) // 2 + 1  # 5
    assert count_macs(conv, x).macs == conv_macs(12, 6, 3, 3, h_out, h_out) == 5400
    assert count_params(conv) == (12 * 2 * 3 * 3 + 12, 12 * 2 * 3 * 3 + 12)


def test_depthwise_conv() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(conv, torch.randn(1, 8, 6, 6)).macs == conv_macs(8, 8, 8, 3, 6, 6) == 2592


def test_linear_counts_one_sample_whatever_the_batch() -> None:
    linear = nn.Linear(20, 7)
    assert count_macs(linear, torch.randn(5, 20)).macs == 20 * 7
    assert count_params(linear) == (20 * 7 + 7, 20 * 7 + 7)


def test_sequential_sums_layers_and_skips_elementwise_ops() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )
    expected = conv_macs(4, 1, 1, 3, 6, 6) + 4 * 6 * 6 * 10
    assert count_macs(model.eval(), torch.randn(2, 1, 8, 8)).macs == expected == 2736
    conv, bn, linear = 4 * 9 + 4, 4 + 4, 144 * 10 + 10
    assert count_params(model)[0] == conv + bn + linear


def test_registered_model_macs_by_hand() -> None:
    macs = (
        conv_macs(16, 1, 1, 3, 28, 28)
        + conv_macs(32, 16, 1, 3, 14, 14)
        + conv_macs(64, 32, 1, 3, 7, 7)
        + 64 * 10
    )
    assert count_macs(create_model("fmnist_tiny").eval(), torch.zeros(1, 1, 28, 28)).macs == macs


def test_nonzero_after_zeroing_weights() -> None:
    linear = nn.Linear(10, 4)
    with torch.no_grad():
        linear.weight[:2].zero_()
        linear.bias.fill_(1.0)
    assert count_params(linear) == (44, 44 - 2 * 10)


def test_tied_parameters_are_counted_once() -> None:
    shared = nn.Linear(6, 6)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared)) == (42, 42)


class Attention(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.scaled_dot_product_attention(x, x, x)


def test_attention_is_counted_on_cpu() -> None:
    b, h, s, d = 1, 2, 16, 8
    # q @ k^T and attn @ v: two batched matmuls of s*s*d MACs per head.
    assert count_macs(Attention(), torch.randn(b, h, s, d)).macs == 2 * b * h * s * s * d


def test_fused_transformer_layer_is_counted() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    s, d, ff = 5, 8, 16
    projections = s * d * 3 * d + s * d * d
    attention = 2 * s * s * d
    feed_forward = 2 * s * d * ff
    assert count_macs(layer, torch.randn(1, s, d)).macs == projections + attention + feed_forward


def test_operator_without_formula_gives_none_and_says_why() -> None:
    result = count_macs(nn.LSTM(4, 8), torch.randn(3, 1, 4))
    assert result.macs is None
    assert result.note is not None and "rnn" in result.note


def test_counting_uses_eval_mode_and_restores_it() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    before = model[1].running_mean.clone()
    # Batch-1 BatchNorm raises in training mode: counting must run in eval mode.
    assert count_macs(model, torch.randn(4, 3)).macs == 9
    assert torch.equal(model[1].running_mean, before)
    assert model.training
