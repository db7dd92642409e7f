"""Fake-quantized Conv1d, Conv2d and Linear: int8 (or narrower) arithmetic simulated in float.

Each class *is* its float layer (a subclass with the same parameter names), so state dicts,
the shared graph and every ``isinstance(m, nn.Conv2d)`` check still see a convolution. It adds
four buffers, the quantization parameters, and plain int attributes for the integer ranges:

==================== =====================================================================
``weight_scale``     float32, one per output channel (per-channel) or 0-dim (per-tensor)
``weight_zero_point`` int32, same shape (0 for symmetric signed weights)
``input_scale``      float32, 0-dim: the input activation's scale (unused when ``dynamic``)
``input_zero_point`` int32, 0-dim
==================== =====================================================================

``forward`` is the float operation on ``fake_quantize(input)`` and ``fake_quantize(weight)``
(``torch.fake_quantize_per_tensor_affine`` and ``torch.fake_quantize_per_channel_affine``):
values are rounded to the integer grid and mapped back, ``(clamp(round(x / s) + z, qmin, qmax)
- z) * s``. Both ops carry a straight-through gradient (1 inside the range, 0 where clamped), so
quantization-aware training is the ordinary training loop. With ``dynamic`` the input's range is
the current batch's min and max (the accuracy model of ONNX Runtime's dynamic quantization).
The bias stays float: real int8 kernels add it in int32 at scale ``input_scale * weight_scale``,
whose rounding is far below the activations' and is not simulated.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[0.5, -0.26]]))
    >>> q = QuantLinear.from_float(
    ...     layer, weight_scale=torch.tensor([0.1]), weight_zero_point=torch.tensor([0]),
    ...     weight_range=(-127, 127), input_scale=torch.tensor(0.5),
    ...     input_zero_point=torch.tensor(0), input_range=(0, 255))
    >>> q.quantized_weight().tolist()          # -0.26 rounds to -3 * 0.1
    [[0.5, -0.30000001192092896]]
    >>> round(q(torch.tensor([[1.2, 0.7]])).item(), 6)   # inputs 1.2 -> 1.0, 0.7 -> 0.5
    0.35
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from slimkit.errors import ConfigError
from slimkit.quantize._observers import qparams_from_range
from slimkit.serialize import register_module_type

__all__ = ["QUANT_CLASSES", "QuantConv1d", "QuantConv2d", "QuantLinear", "is_quantized"]

_Q = TypeVar("_Q", bound="_FakeQuant")


class _FakeQuant(nn.Module):
    """What the three classes share: qparam buffers, integer ranges and the two fake-quant ops."""

    weight: nn.Parameter
    weight_scale: Tensor
    weight_zero_point: Tensor
    input_scale: Tensor
    input_zero_point: Tensor
    weight_quant_min: int
    weight_quant_max: int
    input_quant_min: int
    input_quant_max: int
    input_symmetric: bool
    dynamic: bool

    @classmethod
    def _float_class(cls) -> type[nn.Module]:
        raise NotImplementedError

    @classmethod
    def _new_like(cls, module: nn.Module, target: type[nn.Module]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_float(
        cls: type[_Q],
        module: nn.Module,
        *,
        weight_scale: Tensor,
        weight_zero_point: Tensor,
        weight_range: tuple[int, int],
        input_scale: Tensor | None = None,
        input_zero_point: Tensor | None = None,
        input_range: tuple[int, int] = (0, 255),
        input_symmetric: bool = False,
        dynamic: bool = False,
    ) -> _Q:
        """The quantized twin of a float ``module``, sharing its parameters.

        Args:
            module: A float layer of exactly this class's float type.
            weight_scale: ``[out_channels]`` (per-channel, along dim 0) or 0-dim (per-tensor).
            weight_zero_point: Same shape as ``weight_scale``, integers.
            weight_range: ``(qmin, qmax)`` of the weights.
            input_scale: 0-dim scale of the input (not needed when ``dynamic``).
            input_zero_point: 0-dim zero point of the input.
            input_range: ``(qmin, qmax)`` of the input.
            input_symmetric: For ``dynamic``: each batch's range is made symmetric.
            dynamic: Quantize the input with each batch's own min/max instead of the
                calibrated ``input_scale``.
        """
        if type(module) is not cls._float_class():
            raise ConfigError(
                f"{cls.__name__}.from_float takes a {cls._float_class().__name__}, got "
                f"{type(module).__name__}."
            )
        if not dynamic and (input_scale is None or input_zero_point is None):
            raise ConfigError(
                f"{cls.__name__}: static quantization needs input_scale and input_zero_point."
            )
        new = cls._new_like(module, cls)
        assert isinstance(new, cls)
        new._set_qparams(
            weight_scale, weight_zero_point, weight_range,
            torch.tensor(1.0) if input_scale is None else input_scale,
            torch.tensor(0) if input_zero_point is None else input_zero_point,
            input_range, input_symmetric, dynamic,
        )  # fmt: skip
        return new

    def to_float(self) -> nn.Module:
        """The float layer back, sharing the (possibly fine-tuned) parameters."""
        return self._new_like(self, self._float_class())

    def _set_qparams(
        self,
        weight_scale: Tensor,
        weight_zero_point: Tensor,
        weight_range: tuple[int, int],
        input_scale: Tensor,
        input_zero_point: Tensor,
        input_range: tuple[int, int],
        input_symmetric: bool,
        dynamic: bool,
    ) -> None:
        out_channels = self.weight.shape[0]
        weight_scale = torch.as_tensor(weight_scale).detach().float()
        if weight_scale.ndim not in (0, 1) or (
            weight_scale.ndim == 1 and weight_scale.numel() != out_channels
        ):
            raise ConfigError(
                f"weight_scale must be 0-dim or have {out_channels} entries (one per output "
                f"channel), got shape {tuple(weight_scale.shape)}."
            )
        for lo, hi in (weight_range, input_range):
            if not lo < hi:
                raise ConfigError(f"an integer range must have qmin < qmax, got ({lo}, {hi}).")
        self.register_buffer("weight_scale", weight_scale.clone())
        self.register_buffer(
            "weight_zero_point",
            torch.as_tensor(weight_zero_point).detach().to(torch.int32).reshape(weight_scale.shape),
        )
        self.register_buffer(
            "input_scale", torch.as_tensor(input_scale).detach().float().reshape(())
        )
        self.register_buffer(
            "input_zero_point",
            torch.as_tensor(input_zero_point).detach().to(torch.int32).reshape(()),
        )
        self.weight_quant_min, self.weight_quant_max = int(weight_range[0]), int(weight_range[1])
        self.input_quant_min, self.input_quant_max = int(input_range[0]), int(input_range[1])
        self.input_symmetric = bool(input_symmetric)
        self.dynamic = bool(dynamic)

    def quantized_weight(self) -> Tensor:
        """The weight rounded to its integer grid (in float), with a straight-through gradient."""
        lo, hi = self.weight_quant_min, self.weight_quant_max
        if self.weight_scale.ndim == 0:
            return torch.fake_quantize_per_tensor_affine(
                self.weight, self.weight_scale, self.weight_zero_point, lo, hi
            )
        return torch.fake_quantize_per_channel_affine(
            self.weight, self.weight_scale, self.weight_zero_point, 0, lo, hi
        )

    def quantized_input(self, x: Tensor) -> Tensor:
        """``x`` rounded to the input's integer grid (calibrated, or this batch's when dynamic)."""
        lo, hi = self.input_quant_min, self.input_quant_max
        if self.dynamic:
            detached = x.detach()
            scale, zero_point = qparams_from_range(
                detached.amin(), detached.amax(), lo, hi, self.input_symmetric
            )
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, lo, hi)
        return torch.fake_quantize_per_tensor_affine(
            x, self.input_scale, self.input_zero_point, lo, hi
        )

    def extra_repr(self) -> str:
        kind = "per-channel" if self.weight_scale.ndim else "per-tensor"
        source = "dynamic" if self.dynamic else f"scale={float(self.input_scale):.4g}"
        return (
            f"{super().extra_repr()}, weight={kind} [{self.weight_quant_min}, "
            f"{self.weight_quant_max}], input={source} [{self.input_quant_min}, "
            f"{self.input_quant_max}]"
        )


def _conv_like(module: nn.Module, target: type[nn.Module]) -> nn.Module:
    m: Any = module
    # Built on the meta device: no initialization work, the parameters are replaced at once.
    new = target(
        m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
        dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
        padding_mode=m.padding_mode, device="meta",
    )  # fmt: skip
    return _share(module, new)


def _linear_like(module: nn.Module, target: type[nn.Module]) -> nn.Module:
    m: Any = module
    new = target(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
    return _share(module, new)


def _share(module: nn.Module, new: nn.Module) -> nn.Module:
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    return new


class QuantConv1d(_FakeQuant, nn.Conv1d):
    """``nn.Conv1d`` on fake-quantized input and weight (see the module docstring)."""

    @classmethod
    def _float_class(cls) -> type[nn.Module]:
        return nn.Conv1d

    @classmethod
    def _new_like(cls, module: nn.Module, target: type[nn.Module]) -> nn.Module:
        return _conv_like(module, target)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(_FakeQuant, nn.Conv2d):
    """``nn.Conv2d`` on fake-quantized input and weight (see the module docstring)."""

    @classmethod
    def _float_class(cls) -> type[nn.Module]:
        return nn.Conv2d

    @classmethod
    def _new_like(cls, module: nn.Module, target: type[nn.Module]) -> nn.Module:
        return _conv_like(module, target)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_FakeQuant, nn.Linear):
    """``nn.Linear`` on fake-quantized input and weight (see the module docstring)."""

    @classmethod
    def _float_class(cls) -> type[nn.Module]:
        return nn.Linear

    @classmethod
    def _new_like(cls, module: nn.Module, target: type[nn.Module]) -> nn.Module:
        return _linear_like(module, target)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


QUANT_CLASSES: dict[type[nn.Module], type[_FakeQuant]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
}
"""Float layer class -> its fake-quantized twin."""

for _cls in QUANT_CLASSES.values():
    register_module_type(_cls)


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is one of the fake-quantized layers.

    Example:
        >>> is_quantized(torch.nn.Linear(2, 2))
        False
    """
    return isinstance(module, _FakeQuant)
