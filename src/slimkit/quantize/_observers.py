"""Calibration observers: from the tensors a layer sees to a quantization range and its qparams.

An observer is fed calibration tensors with :meth:`Observer.update` and then gives the range to
quantize (:meth:`Observer.range`) and the affine parameters of that range
(:meth:`Observer.qparams`): ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``. Ranges are
per tensor (``axis=None``) or per channel along ``axis``; integers of 2 to 8 bits, signed or
unsigned, symmetric or asymmetric (:class:`QuantSpec`).

Methods (:data:`OBSERVERS`):

- ``minmax``: the smallest and largest value seen.
- ``moving_average``: an exponential moving average of each batch's min and max (torch.ao's
  ``MovingAverageMinMaxObserver``, averaging constant 0.01): one outlier batch moves it little.
- ``percentile``: the ``p``-th percentile of ``|x|`` (symmetric) or the ``100 - p``-th and
  ``p``-th percentiles of ``x`` (asymmetric), from a 2048-bin-per-sign histogram.
- ``entropy``: TensorRT's calibration (also ONNX Runtime's ``Entropy``): the clipping threshold
  of the ``|x|`` histogram (2048 bins) whose quantized distribution is closest in KL divergence
  to the clipped one.
- ``mse``: the clipping range (the observed range scaled by 0.01 ... 1) whose
  quantize-dequantize round trip has the smallest mean squared error on the histogram.

The histogram keeps 2048 bins per sign over ``[-T, T]`` (``T`` the largest magnitude seen); when
a later batch exceeds ``T`` the bins are merged pairwise (their width doubles) until it fits, so
counts are never re-interpolated and the histogram stays exact at its resolution.

Example:
    >>> import torch
    >>> spec = QuantSpec(bits=8, signed=False)             # asymmetric uint8
    >>> observer = create_observer("minmax", spec)
    >>> observer.update(torch.tensor([-1.0, 0.5, 3.0]))
    >>> [round(float(v), 6) for v in observer.range()]
    [-1.0, 3.0]
    >>> scale, zero_point = observer.qparams()
    >>> round(float(scale) * 255, 5), int(zero_point)  # scale 4 / 255, zero point round(1 / scale)
    (4.0, 64)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slimkit.errors import ConfigError, DataError

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageObserver",
    "Observer",
    "PercentileObserver",
    "QuantSpec",
    "create_observer",
    "qparams_from_range",
    "quant_range",
]

_EPS = torch.finfo(torch.float32).eps
HISTOGRAM_BINS = 2048  # per sign: TensorRT's entropy calibration uses 2048 bins of |x|


def quant_range(bits: int, signed: bool, symmetric: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit integer.

    Signed symmetric ranges are narrow (``-127 .. 127`` for 8 bits, as in TensorRT and ONNX
    Runtime's symmetric int8): the zero point is then exactly 0 and ``-x`` quantizes to ``-q``.

    Example:
        >>> quant_range(8, signed=False), quant_range(8, signed=True), quant_range(4, True, True)
        ((0, 255), (-128, 127), (-7, 7))
    """
    if not 2 <= bits <= 8:
        raise ConfigError(f"bits must be between 2 and 8, got {bits}.")
    if not signed:
        return 0, 2**bits - 1
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if symmetric else -qmax - 1), qmax


def qparams_from_range(
    min_val: Tensor | float,
    max_val: Tensor | float,
    qmin: int,
    qmax: int,
    symmetric: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(scale, zero_point)`` that map ``[min_val, max_val]`` onto ``[qmin, qmax]``.

    The range is widened to contain 0, so that zero (padding, ReLU outputs) is exact.
    Asymmetric: ``scale = (max - min) / (qmax - qmin)``, ``zero_point = qmin - round(min /
    scale)`` (torch.ao's formula). Symmetric: the zero point is the middle of the integer range
    (0 for signed, ``2**(bits-1)`` for unsigned) and ``scale = max(|min|, |max|) / (qmax -
    zero_point)``. ``scale`` is float32 and at least float32's epsilon (an all-zero tensor
    still gets a valid scale); ``zero_point`` is int32. Works element-wise on per-channel ranges.

    Example:
        >>> scale, zp = qparams_from_range(-1.0, 3.0, 0, 255)
        >>> round(float(scale) * 255, 5), int(zp)  # scale 4 / 255
        (4.0, 64)
        >>> scale, zp = qparams_from_range(-2.54, 1.0, -127, 127, symmetric=True)
        >>> round(float(scale), 6), int(zp)
        (0.02, 0)
    """
    lo = torch.as_tensor(min_val, dtype=torch.float32)
    hi = torch.as_tensor(max_val, dtype=torch.float32)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        middle = (qmin + qmax + 1) // 2
        amax = torch.maximum(-lo, hi)
        scale = (amax / min(qmax - middle, middle - qmin)).clamp(min=_EPS)
        zero_point = torch.full_like(scale, middle, dtype=torch.int32)
        return scale, zero_point
    scale = ((hi - lo) / float(qmax - qmin)).clamp(min=_EPS)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        bits: Integer width, 2 to 8.
        signed: ``int`` (True) or ``uint`` (False) range.
        symmetric: Zero point in the middle of the range (weights); otherwise the range's ends
            follow the data (activations after ReLU use all 256 levels).
        axis: Per-channel along this dimension; ``None``: one range for the whole tensor.

    Example:
        >>> QuantSpec(bits=8, signed=True, symmetric=True, axis=0).qrange
        (-127, 127)
    """

    bits: int = 8
    signed: bool = False
    symmetric: bool = False
    axis: int | None = None

    def __post_init__(self) -> None:
        quant_range(self.bits, self.signed, self.symmetric)  # validates the width

    @property
    def qrange(self) -> tuple[int, int]:
        return quant_range(self.bits, self.signed, self.symmetric)


class Observer:
    """Base class: tracks the exact min and max of what it sees; subclasses choose the range.

    Per-channel observers reduce over every dimension except ``spec.axis``; the range tensors
    then have one entry per channel, per-tensor ones are 0-dim.
    """

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.min_val: Tensor | None = None  # [channels] (1 for per-tensor)
        self.max_val: Tensor | None = None
        self.batches = 0

    def update(self, x: Tensor) -> None:
        """Observe one calibration tensor."""
        flat = self._flatten(x)
        if flat.shape[1] == 0:
            raise DataError(f"an observer got an empty tensor of shape {tuple(x.shape)}.")
        if not bool(torch.isfinite(flat).all()):
            raise DataError(
                f"an observer got non-finite values (NaN or inf) in a tensor of shape "
                f"{tuple(x.shape)}: the model produces them on the calibration data; check the "
                "inputs' normalization and the model's weights."
            )
        batch_min, batch_max = flat.amin(dim=1), flat.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = batch_min, batch_max
        else:
            self.min_val = torch.minimum(self.min_val, batch_min)
            self.max_val = torch.maximum(self.max_val, batch_max)
        self._observe(flat, batch_min, batch_max)
        self.batches += 1

    def range(self) -> tuple[Tensor, Tensor]:
        """The ``(min, max)`` to quantize: 0-dim per tensor, one entry per channel otherwise."""
        lo, hi = self._range()
        if self.spec.axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` of :meth:`range` (see :func:`qparams_from_range`)."""
        lo, hi = self.range()
        qmin, qmax = self.spec.qrange
        return qparams_from_range(lo, hi, qmin, qmax, self.spec.symmetric)

    # --- for subclasses ----------------------------------------------------------------------
    def _observe(self, flat: Tensor, batch_min: Tensor, batch_max: Tensor) -> None:
        """Called after the min/max bookkeeping with ``flat`` of shape ``[channels, values]``."""

    def _range(self) -> tuple[Tensor, Tensor]:
        return self._seen()

    def _seen(self) -> tuple[Tensor, Tensor]:
        if self.min_val is None or self.max_val is None:
            raise DataError(
                "an observer was asked for its range before it saw any calibration data: the "
                "layer was never called on the calibration samples."
            )
        return self.min_val, self.max_val

    def _flatten(self, x: Tensor) -> Tensor:
        x = x.detach().float()
        if self.spec.axis is None:
            return x.reshape(1, -1)
        if x.ndim == 0 or not -x.ndim <= self.spec.axis < x.ndim:
            raise ConfigError(
                f"per-channel axis {self.spec.axis} does not exist in a tensor of shape "
                f"{tuple(x.shape)}."
            )
        channels = x.shape[self.spec.axis]
        flat = x.movedim(self.spec.axis, 0).reshape(channels, -1)
        if self.min_val is not None and self.min_val.numel() != channels:
            raise DataError(
                f"a per-channel observer saw {self.min_val.numel()} channels, then {channels}."
            )
        return flat


class MinMaxObserver(Observer):
    """The whole observed range: nothing is clipped (the default for weights)."""


class MovingAverageObserver(Observer):
    """An exponential moving average of the per-batch min and max.

    ``min <- min + c * (batch_min - min)``, starting from the first batch's (torch.ao's
    ``MovingAverageMinMaxObserver``, ``c = 0.01``).
    """

    def __init__(self, spec: QuantSpec, averaging_constant: float = 0.01) -> None:
        super().__init__(spec)
        if not 0.0 < averaging_constant <= 1.0:
            raise ConfigError(f"averaging_constant must be in (0, 1], got {averaging_constant}.")
        self.averaging_constant = averaging_constant
        self.avg_min: Tensor | None = None
        self.avg_max: Tensor | None = None

    def _observe(self, flat: Tensor, batch_min: Tensor, batch_max: Tensor) -> None:
        if self.avg_min is None or self.avg_max is None:
            self.avg_min, self.avg_max = batch_min, batch_max
            return
        c = self.averaging_constant
        self.avg_min = self.avg_min + c * (batch_min - self.avg_min)
        self.avg_max = self.avg_max + c * (batch_max - self.avg_max)

    def _range(self) -> tuple[Tensor, Tensor]:
        self._seen()
        assert self.avg_min is not None and self.avg_max is not None
        return self.avg_min, self.avg_max


class _HistogramObserver(Observer):
    """Keeps a histogram of 2048 bins per sign over ``[-T, T]``, per channel.

    ``hist[c, 0, i]`` counts values in ``[i w, (i + 1) w)``, ``hist[c, 1, i]`` values in
    ``(-(i + 1) w, -i w]``; ``w`` (``width[c]``) doubles, merging bins pairwise, whenever a value
    falls beyond ``T = bins * w``.
    """

    def __init__(self, spec: QuantSpec, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(spec)
        if bins < 2 or bins % 2:
            raise ConfigError(f"histogram bins must be an even number >= 2, got {bins}.")
        self.bins = bins
        self.hist: Tensor | None = None  # [channels, 2, bins], float64 counts
        self.width: Tensor | None = None  # [channels]
        self.zeros: Tensor | None = None  # [channels]: exact zeros (ReLU outputs, padding)

    def _observe(self, flat: Tensor, batch_min: Tensor, batch_max: Tensor) -> None:
        channels, k = flat.shape[0], self.bins
        amax = torch.maximum(batch_max.abs(), batch_min.abs()).double()
        if self.hist is None or self.width is None:
            self.width = torch.where(amax > 0, amax / k, torch.full_like(amax, _EPS))
            self.hist = torch.zeros(channels, 2, k, dtype=torch.float64)
        for _ in range(2048):  # each pass doubles the width; 2048 doublings overflow float64
            grow = amax > self.width * k
            if not bool(grow.any()):
                break
            merged = self.hist.view(channels, 2, k // 2, 2).sum(-1)
            merged = torch.cat([merged, torch.zeros_like(merged)], dim=-1)
            self.hist = torch.where(grow[:, None, None], merged, self.hist)
            self.width = torch.where(grow, self.width * 2, self.width)
        index = (flat.abs().double() / self.width[:, None]).floor().clamp(max=k - 1).long()
        negative = (flat < 0).long()
        flat_index = (torch.arange(channels)[:, None] * 2 + negative) * k + index
        counts = torch.bincount(flat_index.reshape(-1), minlength=channels * 2 * k)
        self.hist += counts.view(channels, 2, k).double()
        zeros = (flat == 0).sum(dim=1).double()
        self.zeros = zeros if self.zeros is None else self.zeros + zeros

    def _histogram(self) -> tuple[Tensor, Tensor]:
        self._seen()
        assert self.hist is not None and self.width is not None
        return self.hist, self.width

    def _ordered(self) -> tuple[Tensor, Tensor, Tensor]:
        """Counts ``[C, 2K]`` from the most negative bin to the most positive, left edges, width."""
        hist, width = self._histogram()
        k = self.bins
        counts = torch.cat([hist[:, 1].flip(-1), hist[:, 0]], dim=-1)
        steps = torch.cat([torch.arange(-k, 0), torch.arange(0, k)]).double()
        return counts, steps[None, :] * width[:, None], width

    def _clip(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        seen_lo, seen_hi = self._seen()
        lo = torch.maximum(lo.float(), seen_lo)
        hi = torch.minimum(hi.float(), seen_hi)
        return torch.minimum(lo, hi), hi


def _quantile(counts: Tensor, left: Tensor, width: Tensor, q: float) -> Tensor:
    """The ``q``-quantile of histograms ``[C, B]``, linearly interpolated inside its bin."""
    cdf = counts.cumsum(dim=1)
    target = cdf[:, -1:] * q
    index = torch.searchsorted(cdf, target).clamp(max=counts.shape[1] - 1)
    before = torch.where(index > 0, cdf.gather(1, (index - 1).clamp(min=0)), 0.0)
    inside = counts.gather(1, index)
    fraction = ((target - before) / inside.clamp(min=1e-12)).clamp(0.0, 1.0)
    return (left.gather(1, index) + fraction * width[:, None]).squeeze(1)


class PercentileObserver(_HistogramObserver):
    """Clips the rare extremes: the ``percentile``-th percentile (99.99 by default).

    Symmetric specs clip ``|x|`` at its percentile; asymmetric ones clip each end separately
    (the ``100 - p`` and ``p`` percentiles of ``x``).
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99) -> None:
        super().__init__(spec)
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}.")
        self.percentile = percentile

    def _range(self) -> tuple[Tensor, Tensor]:
        q = self.percentile / 100.0
        if self.spec.symmetric:
            hist, width = self._histogram()
            absolute = hist.sum(dim=1)
            left = torch.arange(self.bins).double()[None, :] * width[:, None]
            t = _quantile(absolute, left, width, q)
            return self._clip(-t, t)
        counts, left, width = self._ordered()
        return self._clip(
            _quantile(counts, left, width, 1.0 - q), _quantile(counts, left, width, q)
        )


class EntropyObserver(_HistogramObserver):
    """TensorRT's KL-divergence calibration on the histogram of ``|x|``.

    For every candidate threshold ``i`` (in bins, from the number of quantized levels to the
    last non-empty bin) the reference distribution ``P`` is the histogram clipped at ``i`` (the
    mass beyond added to its last bin) and ``Q`` is the first ``i`` bins merged into as many
    levels as the quantizer has for ``|x|`` and spread back over the non-empty bins; the
    threshold minimizing ``KL(P || Q)`` wins. Non-negative data quantized asymmetrically (ReLU
    outputs into uint8) has all ``2**bits`` levels for ``|x|``, anything else half of them.

    Two departures from TensorRT, both for data it was not designed for:

    - Exact zeros are left out of the histogram. Every candidate represents 0 exactly, but
      merging the first bins spreads a ReLU's spike of zeros over its neighbours, which KL
      scores as a large error growing with the range: on a small ``fmnist_resnet`` that
      clipped at a third of the range and lost 3 points of accuracy (none without the zeros).
    - The histogram is merged down to at most one bin per 16 values (2048 bins need 32k
      values): per-channel weights of a few hundred values give no distribution to compare
      and keep their full range instead of a noise-driven clip.
    """

    def _range(self) -> tuple[Tensor, Tensor]:
        hist, width = self._histogram()
        seen_lo, _ = self._seen()
        assert self.zeros is not None
        absolute = hist.sum(dim=1)
        absolute[:, 0] -= self.zeros
        thresholds = []
        for c in range(absolute.shape[0]):
            non_negative = bool(seen_lo[c] >= 0) and not self.spec.symmetric
            levels = 2**self.spec.bits if non_negative else 2 ** (self.spec.bits - 1)
            bins, merge = self.bins, 1
            while bins > 1 and bins * 16 > float(absolute[c].sum()):
                bins, merge = bins // 2, merge * 2
            coarse = absolute[c].view(bins, merge).sum(1)
            thresholds.append(_kl_threshold(coarse, levels) * width[c] * merge)
        t = torch.stack(thresholds)
        return self._clip(-t, t)


def _kl_threshold(hist: Tensor, levels: int, chunk: int = 256) -> Tensor:
    """The clipping threshold, in bins, of TensorRT's entropy calibration of ``hist``."""
    nonzero = torch.nonzero(hist).flatten()
    if nonzero.numel() == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    n = int(nonzero[-1]) + 1
    if n <= levels:
        return torch.tensor(float(n), dtype=torch.float64)  # every level fits: nothing to clip
    hist = hist[:n]
    cumulative = hist.cumsum(0)
    positions = torch.arange(n)
    best_kl, best_i = float("inf"), n
    for start in range(levels, n + 1, chunk):
        cands = torch.arange(start, min(start + chunk, n + 1))
        rows = torch.arange(len(cands))
        inside = positions[None, :] < cands[:, None]
        clipped = hist[None, :] * inside
        p = clipped.clone()
        p[rows, cands - 1] += cumulative[-1] - cumulative[cands - 1]  # outliers into the last bin
        nonempty = (p > 0) & inside
        merged = cands // levels
        level = torch.clamp(positions[None, :] // merged[:, None], max=levels - 1) * inside
        mass = torch.zeros(len(cands), levels, dtype=hist.dtype).scatter_add_(1, level, clipped)
        spread = torch.zeros(len(cands), levels, dtype=hist.dtype).scatter_add_(
            1, level, nonempty.to(hist.dtype)
        )
        q = torch.where(nonempty, mass.gather(1, level) / spread.gather(1, level).clamp(min=1), 0)
        p = p / p.sum(1, keepdim=True)
        q = q / q.sum(1, keepdim=True).clamp(min=1e-300)
        # A level that holds only outliers gives Q = 0 where P > 0: infinite divergence, rejected.
        ratio = torch.where(nonempty, p / q, 1.0)
        kl = torch.where(nonempty, p * torch.log(ratio), 0.0).sum(1)
        kl = torch.where(torch.isnan(kl), torch.inf, kl)
        value, index = kl.min(0)
        if float(value) < best_kl:
            best_kl, best_i = float(value), int(cands[index])
    return torch.tensor(float(best_i), dtype=torch.float64)


class MSEObserver(_HistogramObserver):
    """The clipping range with the smallest quantization error on the histogram.

    Candidates are the observed range scaled by ``k / steps`` (``k = 1 .. steps``, 100 by
    default); each is scored by the squared error of quantizing and dequantizing the bin
    centers, weighted by their counts.
    """

    def __init__(self, spec: QuantSpec, steps: int = 100) -> None:
        super().__init__(spec)
        self.steps = steps

    def _range(self) -> tuple[Tensor, Tensor]:
        counts, left, width = self._ordered()
        centers = (left + width[:, None] / 2).float()
        counts = counts.float()
        seen_lo, seen_hi = self._seen()
        qmin, qmax = self.spec.qrange
        best_err = torch.full_like(seen_lo, torch.inf)
        best_lo, best_hi = seen_lo.clone(), seen_hi.clone()
        for k in range(1, self.steps + 1):
            lo, hi = seen_lo * (k / self.steps), seen_hi * (k / self.steps)
            scale, zp = qparams_from_range(lo, hi, qmin, qmax, self.spec.symmetric)
            scale, zp = scale[:, None], zp[:, None].float()
            q = torch.clamp(torch.round(centers / scale) + zp, qmin, qmax)
            err = (counts * (centers - (q - zp) * scale) ** 2).sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi


OBSERVERS: dict[str, Callable[..., Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}


def create_observer(name: str, spec: QuantSpec, **options: Any) -> Observer:
    """A new observer of method ``name`` (a key of :data:`OBSERVERS`) for tensors of ``spec``.

    ``options`` go to the observer: ``percentile`` (percentile), ``averaging_constant``
    (moving_average), ``steps`` (mse).

    Example:
        >>> import torch
        >>> x = torch.cat([torch.randn(100_000, generator=torch.Generator().manual_seed(0)),
        ...                torch.tensor([40.0])])               # a gaussian and one outlier
        >>> observer = create_observer("percentile", QuantSpec(signed=True, symmetric=True))
        >>> observer.update(x)
        >>> 3.0 < float(observer.range()[1]) < 5.0               # the outlier is clipped
        True
    """
    if name not in OBSERVERS:
        raise ConfigError(f"unknown observer {name!r}; available: {', '.join(OBSERVERS)}.")
    return OBSERVERS[name](spec, **options)
