"""Export to a ``torch.export`` ExportedProgram file (``.pt2``), for users who stay in PyTorch.

The program is the same ATen graph that :func:`slimkit.graph.capture` gives pruning, fusion and
quantization (one capture mechanism), with the batch (and, for token ids, the sequence) dims left
dynamic. It runs without the model's Python source, feeds ``torch.compile``/AOTInductor and
ExecuTorch, and is checked against the eager model before it is written.

Loading it is ``torch.export.load(path).module()``. That uses pickle inside, so load only files
you made or trust, as for any ``torch.save`` file; share weights as safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from slimkit._io import atomic_path
from slimkit.compile._onnx import _check_inputs, _dynamic_axes, _widen
from slimkit.errors import ConfigError, SlimkitError
from slimkit.graph import CaptureError, capture
from slimkit.measure._runner import _as_tensor

__all__ = ["ProgramExportError", "export_program"]


class ProgramExportError(SlimkitError, RuntimeError):
    """The exported program does not reproduce the eager model's outputs."""


def export_program(
    model: nn.Module,
    example_inputs: Tensor,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[int, str] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> Path:
    """Capture ``model`` with ``torch.export``, check it against eager, save it as ``.pt2``.

    Args:
        model: The module to export (in eval mode; its mode is restored).
        example_inputs: One batch of real inputs (any batch size).
        path: Where to write the ``.pt2`` file (written atomically).
        dynamic_batch: Keep dim 0 dynamic (any batch size).
        dynamic_axes: Other dims to keep dynamic, as in
            :func:`~slimkit.compile.export_onnx`: ``None`` makes the sequence dim of token ids
            dynamic, ``{}`` none.
        atol: Absolute tolerance of the check against eager.
        rtol: Relative tolerance of the check against eager.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: The arguments are inconsistent (an axis outside the inputs).
        CaptureError: ``torch.export`` cannot capture the model (the message says why).
        ProgramExportError: The program's outputs differ from eager's beyond the tolerance.

    Example:
        >>> import tempfile, pathlib, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     file = export_program(net, torch.randn(2, 4), pathlib.Path(tmp) / "net.pt2")
        ...     torch.export.load(file).module()(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export_program exports an nn.Module, got {type(model).__name__}.")
    if not isinstance(example_inputs, Tensor) or example_inputs.dim() == 0:
        raise ConfigError(
            "example_inputs must be a tensor holding at least one sample along dim 0."
        )
    axes = _dynamic_axes(example_inputs, dynamic_batch, dynamic_axes)
    program = capture(model, _widen(example_inputs, axes), tuple(axes)).program
    _verify(model, program.module(), _check_inputs(example_inputs, axes), atol, rtol)
    with atomic_path(path, suffix=".tmp.pt2") as tmp:  # torch.export.save wants a .pt2 name
        torch.export.save(program, tmp)
    return Path(path)


def write_program(model: nn.Module, example_inputs: Tensor, folder: Path) -> str:
    """Write ``folder/model.pt2``; returns its path, or why not (the caller goes on without it)."""
    try:
        return str(export_program(model, example_inputs, folder / "model.pt2"))
    except (CaptureError, ProgramExportError) as exc:
        return f"not written: {str(exc).splitlines()[0]}"


def _verify(
    model: nn.Module, exported: nn.Module, inputs: list[Tensor], atol: float, rtol: float
) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                expected, got = _as_tensor(model(x)), _as_tensor(exported(x))
                if got.shape != expected.shape or not torch.allclose(got, expected, rtol, atol):
                    raise ProgramExportError(
                        f"the exported program's outputs differ from eager's on inputs of shape "
                        f"{tuple(x.shape)}: shapes {tuple(got.shape)} vs {tuple(expected.shape)}"
                        + (
                            f", max abs difference {float((got - expected).abs().max()):.3g}"
                            if got.shape == expected.shape
                            else ""
                        )
                        + f" (tolerance {atol:g} + {rtol:g} x |output|)."
                    )
    finally:
        model.train(was_training)
