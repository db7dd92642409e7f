"""Static counts: parameters and multiply-accumulates (MACs).

MACs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matmul family only (convolutions, ``mm``/``addmm``/``bmm``/``baddbmm`` and attention). One MAC
is two FLOPs there, so MACs = FLOPs / 2. Elementwise operations (activations, normalization,
residual adds, pooling, softmax) are **not** counted: MACs measure the arithmetic that
compression removes, not total work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["MacCount", "count_macs", "count_params"]

_aten = torch.ops.aten

# PyTorch's CPU attention kernel has no formula in flop_counter (2.4 .. 2.14), so attention
# would silently count as zero on CPU, which is where slimkit measures.
_EXTRA_FORMULAS: dict[Any, Any] = {}
if hasattr(_aten, "_scaled_dot_product_flash_attention_for_cpu"):

    def _cpu_sdpa_flops(query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    _EXTRA_FORMULAS[_aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops

# Names of operators that do matmul-like work. One of these without a formula means the count
# would be too low, so the count is refused rather than reported wrong.
_COMPUTE_OP = re.compile(
    r"conv|matmul|linear|lstm|gru|rnn|attention|transformer|einsum|bilinear|mm$|mv$|dot$"
)


def count_params(module: nn.Module) -> tuple[int, int]:
    """Total and non-zero parameter counts; shared (tied) parameters are counted once.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight[0].zero_()
        >>> count_params(layer)
        (10, 6)
    """
    total = nonzero = 0
    for param in module.parameters():  # parameters() already skips duplicates
        total += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()))
    return total, nonzero


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass at batch 1, or ``None`` with the reason in ``note``."""

    macs: int | None
    note: str | None = None


def count_macs(module: nn.Module, sample: Tensor) -> MacCount:
    """Multiply-accumulates of one forward pass of ``module`` on ``sample[:1]`` (batch 1).

    The module runs in eval mode (its mode is restored afterwards) under inference mode.

    Example:
        >>> import torch
        >>> count_macs(torch.nn.Linear(4, 2), torch.zeros(8, 4)).macs
        8
    """
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    was_training = module.training
    try:
        with torch.inference_mode(), _mha_fastpath(False), recorder, counter:
            module.eval()(sample[:1])
    except Exception as exc:
        return MacCount(None, f"FlopCounterMode could not count this model: {exc}")
    finally:
        module.train(was_training)
    missing = sorted(
        str(op)
        for op in recorder.ops
        if op not in counter.flop_registry and _COMPUTE_OP.search(str(op))
    )
    if missing:
        ops = ", ".join(missing)
        return MacCount(
            None, f"not countable: no MAC formula in torch.utils.flop_counter for {ops}"
        )
    return MacCount(counter.get_total_flops() // 2)


@contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    # The fused inference kernels of nn.MultiheadAttention and nn.TransformerEncoderLayer have no
    # formulas; their unfused path does the same matmuls through counted operators.
    mha = torch.backends.mha
    if not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


class _OpRecorder(TorchDispatchMode):
    """Records the operators that actually run, below FlopCounterMode's own decompositions."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))
