"""Measuring a candidate: accuracy (short training or supernet), latency, parameters, MACs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit._runtime import log
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.measure._accuracy import accuracy
from slimkit.measure._counts import count_macs, count_params
from slimkit.models import create_model
from slimkit.search._config import SearchConfig
from slimkit.search._fmnist_space import FmnistSpace
from slimkit.search._latency import LatencyTable, measure_latency
from slimkit.search._objectives import Objective
from slimkit.search._supernet import (
    Supernet,
    calibration_batches,
    load_supernet,
    recalibrate_bn,
    train_supernet,
)
from slimkit.train import train

__all__ = ["CandidateEvaluator", "Evaluation", "search_splits"]


@dataclass
class Evaluation:
    """The metrics of one candidate and, when it was trained, the trained model."""

    metrics: dict[str, float]
    model: nn.Module | None = field(default=None, repr=False)


Evaluate = Callable[[Any], "Evaluation | Mapping[str, float]"]
"""``evaluate(arch)``: an :class:`Evaluation` or a plain mapping of metric values."""


def as_evaluation(result: Evaluation | Mapping[str, float]) -> Evaluation:
    if isinstance(result, Evaluation):
        return result
    return Evaluation({k: float(v) for k, v in result.items()})


def search_splits(data: DataSplits, config: SearchConfig) -> DataSplits:
    """The search's own split: training samples to train on, held-out ones to rank by.

    ``config.val_samples`` training samples (a seeded draw) become the validation set (the
    "test" split of the result); ``config.train_subset`` of the others are trained on. The real
    test set is never searched on.
    """
    n = len(data.train_inputs)
    if config.val_samples >= n:
        raise ConfigError(
            f"val_samples ({config.val_samples}) must be smaller than the {n} training samples."
        )
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=gen)
    val, rest = order[: config.val_samples], order[config.val_samples :]
    if config.train_subset is not None:
        rest = rest[: config.train_subset]
    return DataSplits(
        name=f"{data.name} (search split)",
        train_inputs=data.train_inputs[rest],
        train_labels=data.train_labels[rest],
        test_inputs=data.train_inputs[val],
        test_labels=data.train_labels[val],
        classes=data.classes,
    )


class CandidateEvaluator:
    """Measures what the objective needs of a ``fmnist_searched`` architecture.

    Args:
        config: The search settings (evaluator, latency mode, training).
        data: The search split (see :func:`search_splits`); ``None`` for ``evaluator: none``.
        supernet: A trained supernet (``evaluator: supernet``); trained on ``data`` if missing.
        table: The latency table (``latency: table``); default the machine's cached one.
    """

    def __init__(
        self, config: SearchConfig, data: DataSplits | None = None, *,
        supernet: Supernet | None = None, table: LatencyTable | None = None,
    ) -> None:  # fmt: skip
        self.config, self.data = config, data
        self.objective: Objective = config.objective()
        needs = self.objective.needs
        self.needs_accuracy = "accuracy" in needs
        self.needs_latency = "latency_ms" in needs
        if self.needs_accuracy and data is None:
            raise ConfigError("measuring accuracy needs data; pass the data set.")
        self.table = table
        if self.needs_latency and config.latency == "table" and table is None:
            self.table = LatencyTable(config.latency_table, threads=config.latency_threads)
        self.supernet = supernet
        self._calibration: list[torch.Tensor] | None = None
        if config.evaluator == "supernet" and self.needs_accuracy and supernet is None:
            self.supernet = self._supernet()

    def _supernet(self) -> Supernet:
        if self.config.supernet_path is not None:
            return load_supernet(self.config.supernet_path)
        space = FmnistSpace(**self.config.space_options)
        log("training the supernet once (sandwich rule)")
        assert self.data is not None
        return train_supernet(space, self.data, self.config.supernet)

    def calibration(self) -> list[torch.Tensor]:
        if self._calibration is None:
            assert self.data is not None
            sup = self.config.supernet
            self._calibration = calibration_batches(
                self.data, sup.recalibration_batches, sup.recalibration_batch_size
            )
        return self._calibration

    def __call__(self, arch: Any) -> Evaluation:
        model = create_model("fmnist_searched", arch=arch)
        example = torch.zeros(1, 1, 28, 28)
        if self.data is not None:
            example = self.data.test_inputs[:1]
        params, _ = count_params(model)
        macs = count_macs(model, example).macs
        metrics: dict[str, float] = {"params": float(params), "macs": float(macs or 0)}
        trained: nn.Module | None = None
        if self.needs_accuracy:
            metrics["accuracy"], trained = self._accuracy(model, arch)
        if self.needs_latency:
            metrics["latency_ms"] = self._latency(trained or model, arch)
        return Evaluation(metrics, trained)

    def _accuracy(self, model: nn.Module, arch: Any) -> tuple[float, nn.Module | None]:
        assert self.data is not None
        if self.config.evaluator == "supernet":
            assert self.supernet is not None
            self.supernet.check(arch)
            recalibrate_bn(self.supernet, self.calibration(), arch)
            return accuracy(self.supernet, self.data.test_loader()), None
        result = train(model, self.config.train, self.data)
        return float(result.test_accuracy or 0.0), result.model

    def _latency(self, model: nn.Module, arch: Any) -> float:
        if self.config.latency == "table":
            assert self.table is not None
            return self.table.predict(arch)
        return measure_latency(model, threads=self.config.latency_threads)
