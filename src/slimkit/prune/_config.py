"""Configuration of structured pruning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimkit.config import Config
from slimkit.train import TrainConfig


class StructuredConfig(Config):
    """What to remove, ranked how, down to what size.

    Attributes:
        importance: How units are ranked: ``l1``/``l2`` (weight magnitude of every slice in the
            unit), ``taylor`` (|weight x gradient| on calibration batches), ``bn_scale`` (|gamma|
            of the unit's batch norms, network slimming; magnitude where there is none),
            ``random`` (a baseline).
        scope: ``global`` ranks units of all groups together (scores normalized per group);
            ``local`` removes the same fraction from every group.
        target: What ``keep`` measures: ``channels`` (removable units), ``params``, ``macs`` or
            measured ``latency`` (batch 1, one thread).
        keep: Fraction of the target quantity to keep, e.g. 0.5 halves the MACs.
        min_channels: Never leave a group with fewer units.
        round_to: Leave every group with a multiple of this many units (e.g. 8 for SIMD).
        ignore: Module paths whose channels are kept.
        calibration_batches: Batches of training data for ``taylor`` importance.
        steps: Prune in this many equal steps (iterative pruning); with ``finetune``, fine-tune
            after each step.
        finetune: Training between and after steps (recipes: the step fine-tunes itself).
        seed: Seed of ``random`` importance and of the calibration batches.

    Example:
        >>> StructuredConfig(target="macs", keep=0.5).importance
        'l2'
    """

    importance: Literal["l1", "l2", "taylor", "bn_scale", "random"] = "l2"
    scope: Literal["global", "local"] = "global"
    target: Literal["channels", "params", "macs", "latency"] = "channels"
    keep: float = Field(default=0.5, gt=0, le=1)
    min_channels: int = Field(default=1, ge=1)
    round_to: int = Field(default=1, ge=1)
    ignore: tuple[str, ...] = ()
    calibration_batches: int = Field(default=8, ge=1)
    steps: int = Field(default=1, ge=1)
    finetune: TrainConfig | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _local_needs_channels(self) -> StructuredConfig:
        if self.scope == "local" and self.target == "latency":
            raise ValueError(
                "scope 'local' removes a fixed fraction per group; use target 'channels', "
                "'params' or 'macs' with it, or scope 'global' for latency"
            )
        return self
