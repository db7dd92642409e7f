"""What a factorizable layer looks like (its geometry) and what a factorization of it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Factorization",
    "LayerGeometry",
    "conv2d",
    "explicit_padding",
    "linear",
    "relative_errors",
    "skip_reason",
]


@dataclass(frozen=True)
class LayerGeometry:
    """A Linear or Conv2d layer and the shape of its real input (one sample).

    ``positions_in``/``positions_out`` are the input and output pixels of a conv (tokens of a
    Linear, both the same); ``positions_mid`` the pixels after striding the rows only, where
    the vertical factor of a separable split runs.
    """

    kind: str  # "linear" or "conv"
    in_ch: int
    out_ch: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    bias: bool
    positions_in: int
    positions_mid: int
    positions_out: int

    @classmethod
    def of(cls, module: nn.Module, x: Tensor, y: Tensor) -> LayerGeometry:
        """The geometry of ``module`` from its input ``x`` and output ``y`` (with a batch dim)."""
        bias = getattr(module, "bias", None) is not None
        if isinstance(module, nn.Linear):
            tokens = x.numel() // (x.shape[0] * module.in_features)
            one = (1, 1)
            return cls(
                "linear",
                module.in_features,
                module.out_features,
                one,
                one,
                (0, 0),
                one,
                bias,
                tokens,
                tokens,
                tokens,
            )
        assert isinstance(module, nn.Conv2d)
        h, w = x.shape[-2:]
        ho, wo = y.shape[-2:]
        return cls(
            "conv",
            module.in_channels,
            module.out_channels,
            _pair(module.kernel_size),
            _pair(module.stride),
            explicit_padding(module),
            _pair(module.dilation),
            bias,
            h * w,
            ho * w,
            ho * wo,
        )

    @property
    def pointwise(self) -> bool:
        """A Linear or 1x1 conv: only SVD applies."""
        return self.kernel == (1, 1)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer on one sample."""
        kh, kw = self.kernel
        return self.out_ch * self.in_ch * kh * kw * self.positions_out

    @property
    def params(self) -> int:
        """Weights and bias."""
        kh, kw = self.kernel
        return self.out_ch * self.in_ch * kh * kw + (self.out_ch if self.bias else 0)

    @property
    def fan_in(self) -> int:
        """Inputs of one output: ``in_ch * kh * kw``."""
        return self.in_ch * self.kernel[0] * self.kernel[1]


@dataclass
class Factorization:
    """One way to factorize one layer: method, rank, cost, error and how to build it.

    Attributes:
        method: ``svd``, ``spatial_svd``, ``tucker2`` or ``cp``.
        rank: ``(r,)``, or ``(r_out, r_in)`` for Tucker-2.
        macs: Multiply-accumulates of the factorized layers on one sample.
        params: Their parameters.
        weight_error: ``||W - W_hat|| / ||W||``.
        activation_error: ``||(W - W_hat) X|| / ||W X||`` on the calibration inputs, when given.
        build: Makes the replacement: an ``nn.Sequential`` of plain layers.
        notes: Facts of the fit (CP degeneracy, fallbacks), for the report.
    """

    method: str
    rank: tuple[int, ...]
    macs: int
    params: int
    weight_error: float
    activation_error: float | None
    build: Callable[[], nn.Sequential] = field(repr=False)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """The error that ranks factorizations: on activations when known, else on weights."""
        return self.activation_error if self.activation_error is not None else self.weight_error

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        return (self.method, self.rank)


def conv2d(
    weight: Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: Tensor | None = None,
) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` holding ``weight`` (``[out, in / groups, kh, kw]``) and ``bias``."""
    out_ch, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(
        in_per_group * groups,
        out_ch,
        (kh, kw),
        stride,
        padding,
        dilation,
        groups,
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def linear(weight: Tensor, bias: Tensor | None = None) -> nn.Linear:
    """A plain ``nn.Linear`` holding ``weight`` (``[out, in]``) and ``bias``."""
    layer = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def skip_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be factorized, or ``None`` when it can."""
    if type(module) is nn.Linear:
        return None
    if type(module) is not nn.Conv2d:
        return f"{type(module).__name__} is not factorized (only plain Conv2d and Linear are)"
    if module.groups != 1:
        return f"grouped conv (groups={module.groups}): already factorized along channels"
    if module.padding_mode != "zeros":
        return f"padding_mode {module.padding_mode!r}: only zero padding splits exactly"
    try:
        explicit_padding(module)
    except ValueError as exc:
        return str(exc)
    if not module.weight.is_floating_point():
        return f"weight dtype {module.weight.dtype} is not floating point"
    return None


def explicit_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The conv's padding as two ints (``same`` resolved when it is symmetric)."""
    padding = conv.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        kh, kw = _pair(conv.kernel_size)
        dh, dw = _pair(conv.dilation)
        total = (dh * (kh - 1), dw * (kw - 1))
        if any(t % 2 for t in total):
            raise ValueError("padding 'same' with an even kernel pads asymmetrically")
        return (total[0] // 2, total[1] // 2)
    return _pair(padding)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def relative_errors(
    weight: Tensor, approx: Tensor, cov: Tensor | None
) -> tuple[float, float | None]:
    """``||W - W_hat|| / ||W||`` and, with the input covariance ``cov`` (over the flattened
    fan-in, as ``F.unfold`` orders it), the same on activations: ``||(W - W_hat) X|| / ||W X||``.
    """
    w = weight.reshape(weight.shape[0], -1).double()
    delta = w - approx.reshape(w.shape).double()
    weight_error = float(delta.norm() / w.norm().clamp_min(1e-300))
    if cov is None:
        return weight_error, None
    total = float(((w @ cov) * w).sum())
    lost = float(((delta @ cov) * delta).sum())
    return weight_error, (max(lost, 0.0) / total) ** 0.5 if total > 0 else 0.0
