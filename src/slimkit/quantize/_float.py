"""float16 and bfloat16 models: every floating tensor in the smaller dtype, one cast at the root.

The model's callers keep passing float32 and getting float32: the root casts floating inputs to
the model's dtype before ``forward`` and floating outputs back to float32 after it, with two
hooks, once for the whole model (not around every layer). The hooks are code, not data, so the
root also carries ``slimkit_io_dtype`` (a plain attribute, saved with the structure), from which
:func:`slimkit.serialize.load_model` reinstalls them.

Example:
    >>> import torch
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_tiny").eval()
    >>> half = to_dtype(model, torch.bfloat16)
    >>> half[0].weight.dtype, half(torch.zeros(1, 1, 28, 28)).dtype
    (torch.bfloat16, torch.float32)
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import ConfigError

__all__ = ["FLOAT_DTYPES", "install_io_cast", "output_error", "to_dtype"]

FLOAT_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


def to_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` computing in ``dtype`` and taking and returning float32 tensors."""
    if dtype not in FLOAT_DTYPES.values():
        raise ConfigError(f"to_dtype takes torch.float16 or torch.bfloat16, got {dtype}.")
    converted = copy.deepcopy(model).to(dtype)
    install_io_cast(converted, dtype)
    return converted


def install_io_cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make ``model`` (in place) cast floating inputs to ``dtype`` and outputs to float32."""
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, h in hooks.items() if _is_cast(h)]:
            del hooks[key]  # reinstalling replaces, so a reloaded model casts once
    model.register_forward_pre_hook(functools.partial(_cast_inputs, dtype=dtype), with_kwargs=True)
    model.register_forward_hook(functools.partial(_cast_outputs))
    model.slimkit_io_dtype = str(dtype).removeprefix("torch.")
    return model


def _is_cast(hook: Callable[..., Any]) -> bool:
    return isinstance(hook, functools.partial) and hook.func in (_cast_inputs, _cast_outputs)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _cast_inputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, dtype: torch.dtype
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return _cast(args, dtype), _cast(kwargs, dtype)


def _cast_outputs(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return _cast(output, torch.float32)


@torch.no_grad()
def output_error(
    reference: nn.Module, model: nn.Module, inputs: Tensor, batch_size: int = 256
) -> dict[str, float]:
    """How far ``model``'s outputs are from ``reference``'s on ``inputs`` (both in eval mode).

    Returns ``max_abs_error``, ``mean_abs_error``, ``output_mse`` (over every output element)
    and ``top1_agreement`` (the fraction of samples whose arg-max output agrees).
    """
    modes = reference.training, model.training
    reference.eval()
    model.eval()
    try:
        max_abs, abs_sum, sq_sum, agree, count, samples = 0.0, 0.0, 0.0, 0, 0, 0
        for batch in inputs.split(batch_size):
            ref, out = reference(batch).float(), model(batch).float()
            diff = (out - ref).abs()
            max_abs = max(max_abs, float(diff.max()))
            abs_sum, sq_sum = abs_sum + float(diff.sum()), sq_sum + float((diff**2).sum())
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            count, samples = count + diff.numel(), samples + ref.shape[0]
    finally:
        reference.train(modes[0])
        model.train(modes[1])
    return {
        "max_abs_error": max_abs,
        "mean_abs_error": abs_sum / max(count, 1),
        "output_mse": sq_sum / max(count, 1),
        "top1_agreement": agree / max(samples, 1),
    }
