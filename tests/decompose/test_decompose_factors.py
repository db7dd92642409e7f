"""Each factorization is exact at full rank, its modules compute what its factors say, and the
cost formulas the budget relies on match PyTorch's own MAC count."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimkit.decompose import cp_als, cp_kernel
from slimkit.decompose._cp import cp_option
from slimkit.decompose._layers import LayerGeometry
from slimkit.decompose._svd import spatial_svd_options, svd_basis, svd_options
from slimkit.decompose._tucker import tucker2_option, tucker2_rank_limits
from slimkit.measure import count_macs

CONVS = [
    dict(kernel_size=3, stride=1, padding=1, dilation=1),
    dict(kernel_size=3, stride=2, padding=1, dilation=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 4), dilation=(1, 2)),
]


def _conv(seed: int, **kwargs: object) -> tuple[nn.Conv2d, torch.Tensor, LayerGeometry]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(6, 10, bias=True, **kwargs).eval()
    x = torch.randn(2, 6, 13, 11)
    return conv, x, LayerGeometry.of(conv, x, conv(x))


@pytest.mark.parametrize("kwargs", CONVS)
def test_tucker2_at_full_rank_reconstructs_the_conv(kwargs: dict) -> None:
    conv, x, geo = _conv(0, **kwargs)
    option = tucker2_option(conv, geo, tucker2_rank_limits(geo), iterations=2, cov=None)
    assert option.weight_error < 1e-6
    with torch.no_grad():
        assert float((option.build()(x) - conv(x)).abs().max()) < 1e-4


@pytest.mark.parametrize("kwargs", CONVS)
def test_channel_and_spatial_svd_at_full_rank_reconstruct_the_conv(kwargs: dict) -> None:
    conv, x, geo = _conv(1, **kwargs)
    kh, kw = geo.kernel
    basis = svd_basis(conv.weight.detach(), None, None)
    [channel] = svd_options(conv, geo, basis, [basis.max_rank])
    [spatial] = spatial_svd_options(conv, geo, [min(6 * kh, 10 * kw)], None)
    with torch.no_grad():
        for option in (channel, spatial):
            assert option.weight_error < 1e-6
            assert float((option.build()(x) - conv(x)).abs().max()) < 1e-4


def test_linear_svd_at_full_rank_reconstructs_the_linear() -> None:
    torch.manual_seed(2)
    layer = nn.Linear(24, 40)
    x = torch.randn(3, 7, 24)  # tokens: any leading dims
    geo = LayerGeometry.of(layer, x, layer(x))
    basis = svd_basis(layer.weight.detach(), None, None)
    [option] = svd_options(layer, geo, basis, [24])
    with torch.no_grad():
        assert float((option.build()(x) - layer(x)).abs().max()) < 1e-5
    assert geo.positions_out == 7 and option.macs == (24 * 24 + 24 * 40) * 7


@pytest.mark.parametrize("kwargs", CONVS)
def test_four_conv_cp_module_equals_the_conv_of_its_reconstructed_kernel(kwargs: dict) -> None:
    conv, x, geo = _conv(3, **kwargs)
    option, fit = cp_option(conv, geo, 7, iterations=30, tolerance=0.0, seed=0, cov=None)
    module = option.build()
    assert [type(m) for m in module] == [nn.Conv2d] * 4
    assert [m.groups for m in module] == [1, 7, 7, 1]
    kernel = cp_kernel(fit.factors).float()
    with torch.no_grad():
        expected = F.conv2d(x, kernel, conv.bias, conv.stride, conv.padding, conv.dilation)
        assert float((module(x) - expected).abs().max()) < 1e-4
    assert 0 < option.weight_error < 1  # a real (lossy) fit, not the identity


def test_cp_factor_norms_are_balanced() -> None:
    torch.manual_seed(4)
    fit = cp_als(torch.randn(8, 6, 3, 3), 5, iterations=20)
    norms = torch.stack([f.norm(dim=0) for f in fit.factors])  # [4 factors, 5 terms]
    assert torch.allclose(norms, norms[:1].expand_as(norms), rtol=1e-6)


@pytest.mark.parametrize("method", ["tucker2", "cp", "svd", "spatial_svd"])
def test_cost_formulas_match_pytorch_mac_count(method: str) -> None:
    conv, x, geo = _conv(5, **CONVS[2])
    if method == "tucker2":
        option = tucker2_option(conv, geo, (4, 3), iterations=1, cov=None)
    elif method == "cp":
        option, _ = cp_option(conv, geo, 5, iterations=2, tolerance=0.0, seed=0, cov=None)
    elif method == "svd":
        [option] = svd_options(conv, geo, svd_basis(conv.weight.detach(), None, None), [4])
    else:
        [option] = spatial_svd_options(conv, geo, [4], None)
    module = option.build()
    assert option.macs == count_macs(module, x[:1]).macs
    assert option.params == sum(p.numel() for p in module.parameters())
    assert geo.macs == count_macs(conv, x[:1]).macs
