"""The configuration of an architecture search (the Python API, the CLI and the recipe step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from slimkit.config import Config
from slimkit.search._objectives import Metric, Objective
from slimkit.search._supernet import SupernetConfig
from slimkit.train import TrainConfig

__all__ = ["ControllerConfig", "SearchConfig", "StrategyName"]

StrategyName = Literal["random", "reinforce", "evolution", "tpe", "nsga2"]

# The strategies that keep their state in Optuna storage and so scale out to many workers.
STORAGE_STRATEGIES = ("random", "tpe", "nsga2")


class ControllerConfig(Config):
    """Settings of the RL controller (``strategy: reinforce``); see ReinforceController."""

    hidden: int = Field(default=64, ge=1)
    cell: Literal["lstm", "gru"] = "lstm"
    lr: float = Field(default=0.01, gt=0)
    baseline_decay: float = Field(default=0.9, ge=0, lt=1)
    entropy_weight: float = Field(default=0.01, ge=0)
    normalize: bool = True
    batch: int = Field(default=1, ge=1)
    tanh_constant: float | None = Field(default=None, gt=0)


class SearchConfig(Config):
    """What to search, how, and what for.

    Attributes:
        space: A registered search space (``fmnist``).
        space_options: Keyword options of that space (for ``fmnist``, the fields of
            :class:`~slimkit.search.FmnistSpaceConfig`: widths, depths, kernels, ...).
        strategy: ``random``, ``reinforce`` (Zoph & Le's RL controller), ``evolution``
            (regularized evolution), ``tpe`` or ``nsga2`` (Optuna's samplers).
        trials: Candidates to evaluate.
        seed: Seed of the strategy (and of the search's data split).
        objectives: Metrics to optimize: ``accuracy``, ``latency_ms``, ``params``, ``macs``, or
            ``reward`` (MnasNet's ACC x (LAT/T)^w). Two or more make a multi-objective search
            whose result is the Pareto front.
        max_latency_ms: Constraint on the batch-1 latency.
        max_params: Constraint on the parameter count.
        max_macs: Constraint on the MACs.
        target_ms: MnasNet's target latency T.
        reward_alpha: MnasNet's exponent when the latency meets T (``w`` below T).
        reward_beta: MnasNet's exponent above T (-1 makes it a hard constraint).
        evaluator: How accuracy is measured: ``train`` (each candidate trained briefly),
            ``supernet`` (a one-shot supernet trained once; candidates inherit its weights) or
            ``none`` (static metrics and latency only).
        latency: ``table`` (a per-operation table measured once per machine) or ``measured``
            (each candidate timed end to end at batch 1).
        latency_threads: Torch threads of the latency measurements.
        latency_table: The table's file; default the machine's cache
            (``~/.cache/slimkit/latency/<cpu>-torch<version>-t<threads>.json``). Delete it to
            measure again (after a change of load, power settings or libraries).
        data: The registered data set (used when no data is passed in).
        train_subset: Training samples of the search split (``None``: all but the validation).
        val_samples: Training samples held out to rank candidates (the test set is never
            searched on).
        train: The short training of each candidate (``evaluator: train``).
        supernet: Training of the supernet and evaluation of its sub-networks.
        supernet_path: A supernet trained before (``slimkit search supernet``); needed by
            workers, optional in one process (otherwise one is trained first).
        population: Population of evolution and NSGA-II.
        tournament: Evolution's sample size.
        controller: Settings of the RL controller.

    Example:
        >>> cfg = SearchConfig(strategy="nsga2", objectives=("accuracy", "latency_ms"))
        >>> cfg.objective().directions
        ['maximize', 'minimize']
    """

    space: str = "fmnist"
    space_options: dict[str, Any] = Field(default_factory=dict)
    strategy: StrategyName = "evolution"
    trials: int = Field(default=50, ge=1)
    seed: int = 0
    objectives: tuple[Metric, ...] = ("accuracy",)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_params: int | None = Field(default=None, ge=1)
    max_macs: int | None = Field(default=None, ge=1)
    target_ms: float | None = Field(default=None, gt=0)
    reward_alpha: float = -0.07
    reward_beta: float = -0.07
    evaluator: Literal["train", "supernet", "none"] = "train"
    latency: Literal["table", "measured"] = "table"
    latency_threads: int = Field(default=1, ge=1)
    latency_table: Path | None = None
    data: str = "fashion-mnist"
    train_subset: int | None = Field(default=10_000, ge=1)
    val_samples: int = Field(default=5_000, ge=1)
    train: TrainConfig = TrainConfig(epochs=1, lr=0.1, label_smoothing=0.1, augment=False)
    supernet: SupernetConfig = SupernetConfig()
    supernet_path: Path | None = None
    population: int = Field(default=20, ge=2)
    tournament: int = Field(default=5, ge=1)
    controller: ControllerConfig = ControllerConfig()

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if not self.objectives:
            raise ValueError("objectives must name at least one metric")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives repeat a metric: {list(self.objectives)}")
        if self.strategy in ("reinforce", "evolution") and len(self.objectives) > 1:
            raise ValueError(
                f"strategy {self.strategy} optimizes one value; use nsga2, tpe or random for "
                f"objectives {list(self.objectives)}, or the MnasNet 'reward'"
            )
        if "reward" in self.objectives and self.target_ms is None:
            raise ValueError("the 'reward' objective needs target_ms (MnasNet's latency T)")
        if self.evaluator == "none" and {"accuracy", "reward"} & set(self.objectives):
            raise ValueError("evaluator 'none' measures no accuracy: use 'train' or 'supernet'")
        if self.strategy == "evolution" and self.tournament > self.population:
            raise ValueError("tournament must not exceed population")
        return self

    def objective(self) -> Objective:
        """The :class:`~slimkit.search.Objective` these settings describe."""
        return Objective(
            metrics=tuple(self.objectives), max_latency_ms=self.max_latency_ms,
            max_params=self.max_params, max_macs=self.max_macs, target_ms=self.target_ms,
            alpha=self.reward_alpha, beta=self.reward_beta,
        )  # fmt: skip
