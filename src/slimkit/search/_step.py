"""The ``search`` recipe step: replace the model by the best architecture a search finds.

Example recipe (the searched model is then trained like any other)::

    model: fmnist_cnn
    data: fashion-mnist
    steps:
      - search: {strategy: evolution, trials: 40, objectives: [reward], target_ms: 1.0}
      - train: {epochs: 6, lr: 0.1, label_smoothing: 0.1, augment: false}

The step ignores the model it receives (the report still measures it as the baseline). Its
model is the best candidate as a registered ``fmnist_searched``: with ``evaluator: supernet``
it holds the supernet's weights for it, with ``evaluator: train`` its short training's weights.
The step folder holds ``trials.json`` (every candidate) and ``pareto.png``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit._io import write_json
from slimkit.recipe import StepContext, StepOutput, register_step
from slimkit.search._config import SearchConfig
from slimkit.search._search import TrialRecord, search

__all__ = ["arch_summary", "search_step"]


@register_step("search", SearchConfig)
def search_step(model: nn.Module, config: SearchConfig, ctx: StepContext) -> StepOutput:
    """Search an architecture on the recipe's data; the best one becomes the model.

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("search").handler is search_step
        True
    """
    result = search(config, ctx.data)
    write_json(ctx.step_dir / "trials.json", result.to_dict())
    plot = result.plot(ctx.step_dir / "pareto.png")
    best = result.best
    info: dict[str, Any] = {
        "strategy": config.strategy,
        "trials": len(result.trials),
        "space_size": result.space_size,
        "seconds": result.seconds,
        "best_trial": best.number,
        "best_arch": arch_summary(best.arch),
        "pareto_plot": str(plot.relative_to(ctx.step_dir.parent.parent)),
        "pareto_front": [_row(t) for t in result.pareto_front()],
    }
    return StepOutput(result.model(best), info)


def _row(trial: TrialRecord) -> dict[str, Any]:
    return {"trial": trial.number, **{k: round(v, 5) for k, v in trial.metrics.items()},
            "arch": arch_summary(trial.arch)}  # fmt: skip


def arch_summary(arch: dict[str, Any]) -> str:
    """A one-line description of an ``fmnist_searched`` architecture.

    Example:
        >>> arch_summary({"stem": 16, "stages": [{"width": 32, "stride": 2, "blocks": [
        ...     {"type": "mbconv", "kernel": 5, "expand": 4, "skip": False},
        ...     {"type": "mbconv", "kernel": 3, "expand": 2, "skip": True}]}]})
        'stem 16 | mbconv x2 w32 k5,3 e4,2 skip 0,1'
    """
    parts = [f"stem {arch['stem']}"]
    for stage in arch["stages"]:
        blocks = stage["blocks"]
        kinds = sorted({b["type"] for b in blocks})
        text = f"{'/'.join(kinds)} x{len(blocks)} w{stage['width']}"
        text += " k" + ",".join(str(b["kernel"]) for b in blocks)
        if any(b["type"] == "mbconv" for b in blocks):
            text += " e" + ",".join(str(b["expand"]) for b in blocks)
        if len(blocks) > 1 and any(b["type"] != "residual" for b in blocks):
            text += " skip " + ",".join(str(int(b["skip"])) for b in blocks)
        parts.append(text)
    return " | ".join(parts)
