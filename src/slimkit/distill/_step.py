"""The ``distill`` recipe step: recover accuracy after compression with the model before it.

Example recipe::

    steps:
      - train: {epochs: 8, lr: 0.1, augment: false}
      - prune: {target: macs, keep: 0.3, round_to: 8}
      - distill:            # teacher: the model before `prune`
          temperature: 4.0
          alpha: 0.9
          train: {epochs: 3, lr: 0.05, augment: false}

The teacher is, by default, the model as it was before the nearest run of compression steps
(``prune``, ``decompose``, ``drop_layers`` or ``sparsify``) of the recipe; ``teacher: FOLDER``
takes a model saved with :func:`slimkit.serialize.save_model` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import field_validator
from torch import nn

from slimkit.distill._config import DistillConfig
from slimkit.distill._distill import run_distillation
from slimkit.errors import ConfigError
from slimkit.recipe import StepContext, StepOutput, register_step
from slimkit.serialize import SPEC_FILE, load_model

__all__ = ["TEACHER_STEPS", "DistillStepConfig", "distill_step"]

TEACHER_STEPS = ("prune", "decompose", "drop_layers", "sparsify")
"""Steps whose input model is the default teacher of a later ``distill`` step."""


class DistillStepConfig(DistillConfig):
    """:class:`~slimkit.distill.DistillConfig` plus where the teacher comes from.

    Attributes:
        teacher: A folder written by :func:`slimkit.serialize.save_model` (relative to the
            current directory). By default: the model before the nearest run of compression steps
            of the recipe (one of :data:`TEACHER_STEPS`).

    Example:
        >>> DistillStepConfig(alpha=0.5).teacher is None
        True
    """

    teacher: Path | None = None

    @field_validator("teacher")
    @classmethod
    def _saved_model(cls, path: Path | None) -> Path | None:
        if path is not None and not (path / SPEC_FILE).is_file():
            raise ValueError(
                f"{str(path)!r} is not a folder written by slimkit.serialize.save_model "
                f"(it has no {SPEC_FILE})"
            )
        return path


@register_step("distill", DistillStepConfig)
def distill_step(model: nn.Module, config: DistillStepConfig, ctx: StepContext) -> StepOutput:
    """Train the model to imitate a teacher (by default the model before compression).

    Example:
        >>> from slimkit.recipe import get_step
        >>> get_step("distill").handler is distill_step
        True
    """
    teacher, source = _teacher(config, ctx)
    distill_config = DistillConfig.model_validate(config.model_dump(exclude={"teacher"}))
    result = run_distillation(model, teacher, ctx.data, distill_config)
    info: dict[str, Any] = {
        "teacher": source,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "history": result.history,
        "seconds": result.seconds,
        "test_accuracy": result.test_accuracy,
        "processes": result.world_size,
        "threads": result.threads,
    }
    return StepOutput(result.model, info)


def _teacher(config: DistillStepConfig, ctx: StepContext) -> tuple[nn.Module, str]:
    if config.teacher is not None:
        return load_model(config.teacher), str(config.teacher)
    # The model before the run of compression steps that ends nearest to this step: after
    # `prune` then `decompose`, the teacher is the model before `prune`, not the pruned one.
    found: tuple[int, str, nn.Module] | None = None
    for index, (name, model) in reversed(list(enumerate(ctx.models_before, start=1))):
        if name in TEACHER_STEPS:
            found = (index, name, model)
        elif found is not None:
            break
    if found is not None:
        index, name, model = found
        return model, f"the model before step {index} ({name})"
    earlier = ", ".join(name for name, _ in ctx.models_before) or "(none)"
    raise ConfigError(
        f"step {ctx.index} (distill) has no teacher: no earlier step compresses the model (one "
        f"of {', '.join(TEACHER_STEPS)}; earlier steps: {earlier}). Add `teacher: FOLDER` (a "
        "model saved by slimkit.serialize.save_model), or put distill after such a step."
    )
