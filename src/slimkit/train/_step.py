"""The ``train`` recipe step: train or fine-tune the model with :func:`slimkit.train.train`."""

from __future__ import annotations

from torch import nn

from slimkit.recipe import StepContext, StepOutput, register_step
from slimkit.train._config import TrainConfig
from slimkit.train._loop import train


@register_step("train", TrainConfig)
def train_step(model: nn.Module, config: TrainConfig, ctx: StepContext) -> StepOutput:
    """Train or fine-tune the model on the recipe's data set.

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("train").handler is train_step
        True
    """
    result = train(model, config, ctx.data)
    info = {
        "history": result.history,
        "seconds": result.seconds,
        "test_accuracy": result.test_accuracy,
    }
    return StepOutput(result.model, info)
