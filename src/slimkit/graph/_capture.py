"""Capture a model as an ATen-level graph with torch.export (non-strict mode).

Non-strict export runs the model's Python like eager mode, so ordinary Python in ``forward``
(attribute access, asserts, loops over fixed ranges) is traced without rewriting the model, and the
graph keeps each operation's module path (``nn_module_stack``) and each parameter's name. That
is what every structural technique needs: pruning maps channels to parameters, decomposition and
fusion find their layers, quantization finds its operators. torch.fx symbolic tracing is not used
as a fallback: it sees modules, not operators, and fails on the same data-dependent control flow.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.export import ExportedProgram

from slimkit.errors import ConfigError, SlimkitError

__all__ = ["CaptureError", "CapturedGraph", "capture"]


class CaptureError(SlimkitError):
    """The model could not be captured as a graph; the message names the cause and a way out."""


@dataclass(frozen=True)
class CapturedGraph:
    """An exported program plus the maps from graph inputs to the model's own tensors."""

    program: ExportedProgram
    param_of_input: dict[str, str]  # placeholder name -> parameter or buffer FQN
    user_inputs: tuple[str, ...]  # placeholder names of the model's own inputs

    @property
    def graph(self) -> torch.fx.Graph:
        return self.program.graph


def capture(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    dynamic_dims: tuple[int, ...] = (),
) -> CapturedGraph:
    """Export ``model`` (in eval mode) on ``example_inputs`` and index its placeholders.

    Args:
        model: The module to capture; its train/eval mode is restored afterwards.
        example_inputs: One tensor or a tuple of tensors, as ``forward`` takes them.
        dynamic_dims: Dims of every input that stay symbolic in the graph (``0``: any batch
            size); the others are specialized to the example's sizes. A dynamic dim needs an
            example size of at least 2 (torch.export specializes sizes 0 and 1).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> g = capture(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))
        >>> sorted(g.param_of_input.values())
        ['0.bias', '0.weight']
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(a, Tensor) for a in args):
        raise ConfigError("example_inputs must be a tensor or a tuple of tensors.")
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # nn.LSTM/GRU refresh their _flat_weights list in forward; export warns about it.
            warnings.filterwarnings("ignore", message=".*were assigned during export")
            program = torch.export.export(
                model, args, strict=False, dynamic_shapes=_dynamic_shapes(args, dynamic_dims)
            )
    except Exception as exc:
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}\n"
            "Ways out: make forward() free of data-dependent Python control flow, or pass the "
            "offending submodule in `ignore` and call it outside the captured region."
        ) from exc
    finally:
        model.train(was_training)
    sig = program.graph_signature
    param_of_input = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    return CapturedGraph(program, param_of_input, tuple(sig.user_inputs))


def _dynamic_shapes(args: tuple[Tensor, ...], dims: tuple[int, ...]) -> tuple | None:
    if not dims:
        return None
    for x in args:
        small = [d for d in dims if d >= x.dim() or x.shape[d] < 2]
        if small:
            raise ConfigError(
                f"dynamic dims {list(dims)} need inputs with those dims of size >= 2, got an "
                f"input of shape {tuple(x.shape)}; pass a larger example."
            )
    return tuple({d: torch.export.Dim.DYNAMIC for d in dims} for _ in args)
