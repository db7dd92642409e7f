"""Quantization ranges and calibration observers: hand-computed values, known distributions."""

from __future__ import annotations

import pytest
import torch

from slimkit.errors import ConfigError, DataError
from slimkit.quantize import OBSERVERS, QuantSpec, create_observer, qparams_from_range, quant_range

SIGNED = QuantSpec(bits=8, signed=True, symmetric=True)
UNSIGNED = QuantSpec(bits=8, signed=False, symmetric=False)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- integer ranges and (scale, zero point) -------------------------------------------------


def test_integer_ranges() -> None:
    assert quant_range(8, signed=False) == (0, 255)
    assert quant_range(8, signed=True) == (-128, 127)
    assert quant_range(8, signed=True, symmetric=True) == (-127, 127)
    assert quant_range(4, signed=True, symmetric=True) == (-7, 7)
    assert quant_range(2, signed=False) == (0, 3)
    with pytest.raises(ConfigError, match="between 2 and 8"):
        quant_range(9, signed=True)


@pytest.mark.parametrize(
    ("lo", "hi", "qmin", "qmax", "symmetric", "scale", "zero_point"),
    [
        (-1.0, 3.0, 0, 255, False, 4 / 255, 64),  # round(1 / (4/255)) = round(63.75)
        (-2.54, 1.0, -127, 127, True, 0.02, 0),  # 2.54 / 127
        (-1.27, 0.5, 0, 255, True, 0.01, 128),  # uint8 symmetric: zero point in the middle
        (2.0, 5.0, 0, 255, False, 5 / 255, 0),  # widened to contain 0
        (-6.0, -2.0, 0, 255, False, 6 / 255, 255),
        (-0.7, 0.3, -7, 7, True, 0.1, 0),  # 4-bit weights
        (-1.0, 2.0, -8, 7, False, 0.2, -3),  # int4 asymmetric: -8 - round(-5)
    ],
)
def test_scale_and_zero_point_by_hand(lo, hi, qmin, qmax, symmetric, scale, zero_point) -> None:
    s, z = qparams_from_range(lo, hi, qmin, qmax, symmetric)
    assert s.dtype == torch.float32 and z.dtype == torch.int32
    assert float(s) == pytest.approx(scale, rel=1e-6) and int(z) == zero_point


def test_all_zero_range_gets_a_valid_scale_and_channels_work_elementwise() -> None:
    s, z = qparams_from_range(0.0, 0.0, 0, 255)
    assert float(s) == torch.finfo(torch.float32).eps and int(z) == 0
    s, z = qparams_from_range(torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 2.55]), 0, 255)
    assert s.tolist() == pytest.approx([4 / 255, 0.01]) and z.tolist() == [64, 0]


def test_fake_quantize_round_trip_matches_hand_computation() -> None:
    scale, zero_point = qparams_from_range(-1.0, 3.0, 0, 255)  # 4/255, 64
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0, 4.0])
    out = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
    s = 4 / 255
    # -1 -> q 0 (= -64 s), 0 exact, 0.5 -> 31.875 -> 32, 3 -> 191.25 -> 191, 4 clamps at 255.
    assert out.tolist() == pytest.approx([-64 * s, 0.0, 32 * s, 191 * s, 191 * s], abs=1e-6)


# --- observers on known data ----------------------------------------------------------------


def test_minmax_is_exact_on_uniform_data_fed_in_batches() -> None:
    x = torch.rand(100_000, generator=gen()) * 7 - 2  # U(-2, 5)
    observer = create_observer("minmax", UNSIGNED)
    for batch in x.split(10_000):
        observer.update(batch)
    lo, hi = observer.range()
    assert lo.ndim == 0 and float(lo) == float(x.min()) and float(hi) == float(x.max())
    scale, zero_point = observer.qparams()
    assert float(scale) == pytest.approx(float(x.max() - x.min()) / 255, rel=1e-6)
    assert int(zero_point) == round(-float(x.min()) / float(scale))


def test_per_channel_ranges_follow_the_axis() -> None:
    w = torch.randn(6, 3, 3, 3, generator=gen()) * torch.arange(1, 7).view(6, 1, 1, 1)
    observer = create_observer("minmax", QuantSpec(bits=8, signed=True, symmetric=True, axis=0))
    observer.update(w)
    lo, hi = observer.range()
    assert torch.equal(lo, w.amin(dim=(1, 2, 3))) and torch.equal(hi, w.amax(dim=(1, 2, 3)))
    scale, zero_point = observer.qparams()
    amax = w.abs().amax(dim=(1, 2, 3))
    assert torch.allclose(scale, amax / 127) and zero_point.tolist() == [0] * 6
    # Activations [N, C, H, W] per channel along axis 1.
    acts = torch.randn(4, 5, 2, 2, generator=gen(1))
    per_channel = create_observer("minmax", QuantSpec(axis=1))
    per_channel.update(acts)
    assert torch.equal(per_channel.range()[1], acts.amax(dim=(0, 2, 3)))


def test_moving_average_by_hand() -> None:
    observer = create_observer("moving_average", UNSIGNED)
    observer.update(torch.tensor([-1.0, 1.0]))
    observer.update(torch.tensor([-11.0, 11.0]))
    lo, hi = observer.range()  # -1 + 0.01 * (-11 - -1) = -1.1
    assert float(lo) == pytest.approx(-1.1) and float(hi) == pytest.approx(1.1)
    fast = create_observer("moving_average", UNSIGNED, averaging_constant=0.5)
    fast.update(torch.tensor([0.0, 2.0]))
    fast.update(torch.tensor([0.0, 4.0]))
    assert float(fast.range()[1]) == pytest.approx(3.0)


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> torch.Tensor:
    """A million N(0, 1) samples and five outliers at +30."""
    body = torch.randn(1_000_000, generator=gen(2))
    return torch.cat([body, torch.full((5,), 30.0)])


@pytest.mark.parametrize("name", ["percentile", "entropy", "mse"])
def test_clipping_observers_clip_outliers_and_keep_the_body(name, gaussian_with_outliers) -> None:
    x = gaussian_with_outliers
    observer = create_observer(name, SIGNED)
    for batch in x[torch.randperm(len(x), generator=gen(3))].split(250_000):
        observer.update(batch)
    _, hi = observer.range()
    minmax = create_observer("minmax", SIGNED)
    minmax.update(x)
    assert float(minmax.range()[1]) == 30.0
    assert 3.0 < float(hi) < 0.8 * 30.0, f"{name}: {float(hi)}"


def test_percentile_matches_the_exact_quantile() -> None:
    x = torch.randn(500_000, generator=gen(4))
    observer = create_observer("percentile", SIGNED, percentile=99.9)
    observer.update(x)
    exact = float(torch.quantile(x.abs()[:100_000], 0.999))  # torch.quantile caps the size
    assert float(observer.range()[1]) == pytest.approx(exact, rel=0.03)
    asym = create_observer("percentile", UNSIGNED, percentile=99.0)
    asym.update(x)
    lo, hi = asym.range()
    assert float(lo) == pytest.approx(-2.326, abs=0.03) and float(hi) == pytest.approx(
        2.326, abs=0.03
    )


def test_uniform_data_is_hardly_clipped_by_entropy_or_mse() -> None:
    x = torch.rand(200_000, generator=gen(5)) * 4  # U(0, 4): no outliers to cut
    for name in ("entropy", "mse"):
        observer = create_observer(name, UNSIGNED)
        observer.update(x)
        assert float(observer.range()[1]) > 0.9 * float(x.max()), name


def test_entropy_is_not_misled_by_the_zeros_of_a_relu() -> None:
    x = torch.relu(torch.randn(500_000, generator=gen(7)))  # half exact zeros
    observer = create_observer("entropy", UNSIGNED)
    observer.update(x)
    lo, hi = observer.range()
    assert float(lo) == 0.0 and 0.8 * float(x.max()) < float(hi) <= float(x.max())


def test_histogram_grows_exactly_when_a_later_batch_is_wider() -> None:
    observer = create_observer("percentile", SIGNED, percentile=100.0)
    observer.update(torch.linspace(-1, 1, 1000))
    observer.update(torch.tensor([10.0, -3.0]))
    assert float(observer.hist.sum()) == 1002
    assert float(observer.width) * 2048 >= 10.0
    lo, hi = observer.range()
    assert float(hi) == pytest.approx(10.0) and float(lo) == pytest.approx(-3.0)  # clipped to seen


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_every_observer_per_channel(name) -> None:
    w = torch.randn(8, 16, generator=gen(6)) * torch.linspace(0.1, 2.0, 8)[:, None]
    observer = create_observer(name, QuantSpec(bits=4, signed=True, symmetric=True, axis=0))
    observer.update(w)
    scale, zero_point = observer.qparams()
    assert scale.shape == (8,) and zero_point.tolist() == [0] * 8
    assert bool((scale > 0).all()) and bool((scale <= w.abs().amax(1) / 7 + 1e-7).all())
    assert scale[-1] > scale[0]  # the wider channel gets the wider grid


def test_bad_tensors_are_refused() -> None:
    observer = create_observer("minmax", UNSIGNED)
    with pytest.raises(DataError, match="empty"):
        observer.update(torch.empty(0))
    with pytest.raises(DataError, match="NaN"):
        observer.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(DataError, match="before it saw"):
        observer.range()
    with pytest.raises(ConfigError, match="unknown observer"):
        create_observer("kl", UNSIGNED)
