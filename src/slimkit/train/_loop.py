"""The training loop shared by every technique that fine-tunes a model."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from slimkit._runtime import log, num_threads, progress, seed_everything
from slimkit.data import DataSplits
from slimkit.measure._accuracy import accuracy
from slimkit.train._checkpoint import load_checkpoint, save_checkpoint
from slimkit.train._config import TrainConfig

Objective = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""Computes the loss of ``model`` on a batch ``(inputs, labels)``; distillation supplies its own."""

StepCallback = Callable[[nn.Module, int], None]
"""Called as ``after_step(model, step)`` after every optimizer step, under ``torch.no_grad()``;
``step`` counts the optimizer steps done so far from 1 (across epochs). Gradual pruning applies
its masks here."""


def cross_entropy_objective(label_smoothing: float = 0.0) -> Objective:
    def objective(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(model(inputs), labels, label_smoothing=label_smoothing)

    return objective


@dataclass
class TrainResult:
    """A trained model and what happened while training it."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def test_accuracy(self) -> float | None:
        return self.history[-1].get("test_accuracy") if self.history else None


def train(
    model: nn.Module,
    config: TrainConfig,
    data: DataSplits,
    *,
    objective: Objective | None = None,
    after_step: StepCallback | None = None,
) -> TrainResult:
    """Train a copy of ``model`` on ``data`` and return it with its history.

    The input model is left untouched. Test accuracy is measured after every epoch. With
    ``config.checkpoint_dir``, an atomic checkpoint is written after every epoch and a killed run
    resumes from it. ``after_step`` (see :data:`StepCallback`) may edit the weights in place after
    every optimizer step, for example to keep pruned weights at zero.

    Example:
        >>> from slimkit.data import load_dataset, DataConfig
        >>> from slimkit.models import create_model
        >>> data = load_dataset(DataConfig(train_subset=512, test_subset=256))  # doctest: +SKIP
        >>> tiny = create_model("fmnist_tiny")
        >>> result = train(tiny, TrainConfig(epochs=1), data)  # doctest: +SKIP
        >>> 0.0 <= result.test_accuracy <= 1.0  # doctest: +SKIP
        True
    """
    objective = objective or cross_entropy_objective(config.label_smoothing)
    model = copy.deepcopy(model)
    with num_threads(config.threads):
        return _Trainer(model, config, data, objective, after_step).run()


class _Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        data: DataSplits,
        objective: Objective,
        after_step: StepCallback | None = None,
    ) -> None:
        seed_everything(config.seed)
        self.config, self.data, self.objective = config, data, objective
        self.after_step = after_step
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model = model.to(memory_format=self.memory_format)
        self.loader = data.train_loader(config.batch_size, augment=config.augment, seed=config.seed)
        self.optimizer = _optimizer(self.model, config)
        total_steps = max(1, config.epochs * len(self.loader))
        self.scheduler = _scheduler(self.optimizer, config, total_steps)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.fingerprint = hashlib.sha256(
            config.model_dump_json(exclude={"resume", "threads"}).encode()
        ).hexdigest()
        if config.checkpoint_dir is not None and config.resume:
            self._resume()

    def run(self) -> TrainResult:
        start = time.perf_counter()
        for epoch in range(self.start_epoch, self.config.epochs):
            record = self._epoch(epoch)
            self.history.append(record)
            log(
                f"epoch {epoch + 1}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
                f"test acc {record['test_accuracy'] * 100:.2f}%  ({record['seconds']:.0f}s)"
            )
            if self.config.checkpoint_dir is not None:
                self._checkpoint(epoch)
            elapsed = (time.perf_counter() - start) / 60
            if self.config.max_minutes is not None and elapsed >= self.config.max_minutes:
                log(
                    f"stopping after epoch {epoch + 1}: "
                    f"the {self.config.max_minutes} min budget is spent"
                )
                break
        self.model.eval()
        self.model = self.model.to(memory_format=torch.contiguous_format)
        return TrainResult(self.model, self.history, time.perf_counter() - start)

    def _epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.loader.set_epoch(epoch)
        start, total_loss, steps = time.perf_counter(), 0.0, 0
        with progress() as bar:
            task = bar.add_task(
                f"epoch {epoch + 1}/{self.config.epochs}", total=len(self.loader), status=""
            )
            for inputs, labels in self.loader:
                loss = self.objective(
                    self.model, inputs.contiguous(memory_format=self.memory_format), labels
                )
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                        "lower the learning rate."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                total_loss, steps = total_loss + loss.item(), steps + 1
                if self.after_step is not None:
                    with torch.no_grad():
                        self.after_step(self.model, epoch * len(self.loader) + steps)
                bar.update(task, advance=1, status=f"loss {total_loss / steps:.4f}")
        test_acc = accuracy(self.model, self.data.test_loader())
        return {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(steps, 1),
            "test_accuracy": test_acc,
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - start,
        }

    def _checkpoint(self, epoch: int) -> None:
        save_checkpoint(
            self.config.checkpoint_dir,
            {
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
                "rng": torch.get_rng_state(),
            },
        )

    def _resume(self) -> None:
        state = load_checkpoint(self.config.checkpoint_dir)
        if state is None:
            return
        if state["fingerprint"] != self.fingerprint:
            log(
                f"ignoring checkpoint in {self.config.checkpoint_dir}: "
                "it was written with another config"
            )
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"])
        self.start_epoch = state["epoch"] + 1
        log(f"resumed from {self.config.checkpoint_dir} after epoch {self.start_epoch}")


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Decay only weight matrices and kernels; decaying biases and norm scales hurts small models.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0
    )


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.15
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
