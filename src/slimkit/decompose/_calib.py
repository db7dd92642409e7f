"""What each layer sees: its input shape on the example, and its input covariance on
calibration data (collected with forward hooks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimkit.data import DataSplits
from slimkit.decompose._layers import LayerGeometry, explicit_padding
from slimkit.errors import ConfigError

__all__ = ["Calibration", "calibration_batches", "input_covariances", "trace_layers"]

Calibration = Tensor | DataSplits | Iterable[Any]
"""Calibration inputs: a data set (training samples are drawn), one tensor of inputs, or an
iterable of batches (tensors, or tuples whose first item is the input)."""


@contextmanager
def _hooks(modules: dict[str, nn.Module], hook: Any) -> Iterator[None]:
    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace_layers(
    model: nn.Module, modules: dict[str, nn.Module], example: Tensor
) -> tuple[dict[str, tuple[LayerGeometry, Tensor]], dict[str, int]]:
    """Run ``example`` once; per layer its geometry and its real input (the first call's).

    Returns:
        The records, and how many times each layer ran (layers that did not run are absent).
    """
    seen: dict[str, tuple[LayerGeometry, Tensor]] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in seen:
                x = args[0].detach()
                seen[name] = (LayerGeometry.of(module, x, output), x.clone())

        return record

    with _hooks(modules, hook), _eval(model), torch.no_grad():
        model(example)
    return seen, calls


def calibration_batches(
    calib: Calibration, samples: int, batch_size: int, seed: int
) -> list[Tensor]:
    """The calibration inputs as batches, at most ``samples`` inputs in all."""
    if isinstance(calib, DataSplits):
        calib = calib.calibration_inputs(samples, seed)
    if isinstance(calib, Tensor):
        calib = calib[:samples].split(batch_size)
    batches, count = [], 0
    for batch in calib:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        if not isinstance(x, Tensor):
            raise ConfigError(
                f"calib yields {type(x).__name__}; give a tensor of inputs, a DataSplits, or "
                "an iterable of input tensors (or (input, label) tuples)."
            )
        batches.append(x[: samples - count])
        count += len(batches[-1])
        if count >= samples:
            break
    if not batches:
        raise ConfigError("calib holds no inputs; give at least one calibration batch.")
    return batches


def input_covariances(
    model: nn.Module, modules: dict[str, nn.Module], batches: list[Tensor]
) -> dict[str, Tensor]:
    """Per layer ``X^T X / n`` (float64) of its inputs over ``batches``: a Linear's input
    vectors, a conv's unfolded patches (``in * kh * kw``, the order of a flattened kernel)."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def accumulate(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            rows = _rows(module, args[0].detach()).float()
            gram = (rows.T @ rows).double()
            sums[name] = sums[name] + gram if name in sums else gram
            counts[name] = counts.get(name, 0) + len(rows)

        return accumulate

    with _hooks(modules, hook), _eval(model), torch.no_grad():
        for batch in batches:
            model(batch)
    return {name: total / counts[name] for name, total in sums.items()}


def _rows(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    assert isinstance(module, nn.Conv2d)
    patches = F.unfold(
        x, module.kernel_size, module.dilation, explicit_padding(module), module.stride
    )
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
