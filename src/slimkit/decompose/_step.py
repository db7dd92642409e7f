"""The ``decompose`` recipe step: :func:`slimkit.decompose.decompose` on the recipe's data.

Example recipe::

    steps:
      - train: {epochs: 8}
      - decompose: {target_macs: 0.5, gate_batch: 64}
      - train: {epochs: 3, lr: 0.05}

Calibration inputs are drawn from the recipe's training data (``calibration_samples``), so the
report shows each layer's activation error and SVD factors are fitted to real inputs.
"""

from __future__ import annotations

from torch import nn

from slimkit.decompose._config import DecomposeConfig
from slimkit.decompose._decompose import decompose, decomposition_report
from slimkit.recipe import StepContext, StepOutput, register_step

__all__ = ["decompose_step"]


@register_step("decompose", DecomposeConfig)
def decompose_step(model: nn.Module, config: DecomposeConfig, ctx: StepContext) -> StepOutput:
    """Factorize conv and linear layers (Tucker-2, CP, SVD), keeping only measured speed-ups.

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("decompose").handler is decompose_step
        True
    """
    new = decompose(model, config, ctx.data.example_input(1), calib=ctx.data)
    return StepOutput(new, decomposition_report(new))
