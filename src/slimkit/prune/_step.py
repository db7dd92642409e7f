"""The ``prune`` recipe step: structured pruning with :func:`slimkit.prune.prune`."""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from slimkit.prune._config import StructuredConfig
from slimkit.prune._layers import LayerConfig, drop_layers
from slimkit.prune._structured import PruneStep, prune
from slimkit.recipe import StepContext, StepOutput, register_step


@register_step("prune", StructuredConfig)
def prune_step(model: nn.Module, config: StructuredConfig, ctx: StepContext) -> StepOutput:
    """Prune the model on the recipe's data (importance, fine-tuning) and report each layer.

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("prune").handler is prune_step
        True
    """
    history: list[PruneStep] = []
    pruned = prune(model, config, ctx.data.example_input(1), data=ctx.data, history=history)
    info = {"steps": [asdict(h) for h in history], "layers": _widths(model, pruned)}
    return StepOutput(pruned, info)


def _widths(before: nn.Module, after: nn.Module) -> list[dict[str, object]]:
    """Output channels/features of every conv and linear layer, before and after."""
    rows = []
    after_modules = dict(after.named_modules())
    for name, module in before.named_modules():
        width = _width(module)
        if width is not None:
            new = _width(after_modules[name])
            kept = round(new / width, 3)
            rows.append({"layer": name, "before": width, "after": new, "kept": kept})
    return rows


def _width(module: nn.Module) -> int | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


@register_step("drop_layers", LayerConfig)
def drop_layers_step(model: nn.Module, config: LayerConfig, ctx: StepContext) -> StepOutput:
    """Remove the least important residual blocks; the info lists them with their scores."""
    pruned = drop_layers(model, config, data=ctx.data)
    removed = pruned.__dict__.pop("slimkit_removed_blocks", {})
    return StepOutput(
        pruned, {"removed_blocks": [{"block": k, "change": v} for k, v in removed.items()]}
    )
