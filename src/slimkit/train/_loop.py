"""The training loop shared by every technique that fine-tunes a model."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from slimkit._runtime import (
    log,
    num_threads,
    progress,
    progress_enabled,
    seed_everything,
    set_progress,
)
from slimkit.data import DataSplits, TensorLoader
from slimkit.errors import ConfigError
from slimkit.measure._accuracy import accuracy
from slimkit.train._checkpoint import load_checkpoint, save_checkpoint
from slimkit.train._config import TrainConfig
from slimkit.train._distributed import (
    DistInfo,
    barrier,
    init_distributed,
    sum_all,
    sync_buffers,
    worker_threads,
)

Objective = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""Computes the loss of ``model`` on a batch ``(inputs, labels)``; distillation supplies its own.
In multi-process training ``model`` is the ``DistributedDataParallel`` wrapper: call it (that is
what synchronizes the gradients) and reach the model itself as ``model.module``."""

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
    world_size: int = 1
    threads: int | None = None

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
    checkpoint_key: str = "",
) -> TrainResult:
    """Train a copy of ``model`` on ``data`` and return it with its history.

    The input model is left untouched. Test accuracy is measured after every epoch. With
    ``config.checkpoint_dir``, an atomic checkpoint is written after every epoch and a killed run
    resumes from it; ``checkpoint_key`` names what else the run depends on (a technique's own
    settings, such as its objective's), so that a checkpoint written for other settings is not
    resumed. ``after_step`` (see :data:`StepCallback`) may edit the weights in place after every
    optimizer step, for example to keep pruned weights at zero.

    Launched by ``torchrun`` with several processes (``WORLD_SIZE`` > 1), the same call trains
    data-parallel (see :mod:`slimkit.train._distributed`): every process joins the process
    group, takes its share of the cores (``threads`` is capped at ``cores // processes``) and its
    shard of every epoch's shuffle, the model is wrapped in ``DistributedDataParallel``,
    ``config.batch_size`` is the global batch (split evenly among the processes), test accuracy
    is measured on shards and summed, and only rank 0 logs and writes checkpoints. Every process
    returns the same trained model.

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
    info = init_distributed()
    if config.batch_size % info.world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} is the global batch of {info.world_size} processes "
            f"and must be a multiple of {info.world_size}."
        )
    model = copy.deepcopy(model)
    with num_threads(worker_threads(config.threads, info)), _quiet_unless(info.is_main):
        trainer = _Trainer(model, config, data, objective, after_step, info, checkpoint_key)
        return trainer.run()


@contextmanager
def _quiet_unless(main: bool) -> Iterator[None]:
    # One log and one progress bar for a multi-process run: rank 0's.
    before = progress_enabled()
    set_progress(before and main)
    try:
        yield
    finally:
        set_progress(before)


class _Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        data: DataSplits,
        objective: Objective,
        after_step: StepCallback | None = None,
        info: DistInfo | None = None,
        checkpoint_key: str = "",
    ) -> None:
        seed_everything(config.seed)
        self.config, self.data, self.objective = config, data, objective
        self.after_step = after_step
        self.dist = info or DistInfo()
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.home = next(model.parameters(), torch.empty(0)).device
        self.device = self.dist.device or self.home
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.loader = data.train_loader(
            config.batch_size // self.dist.world_size, augment=config.augment, seed=config.seed,
            rank=self.dist.rank, world_size=self.dist.world_size,
        )  # fmt: skip
        self.optimizer = _optimizer(self.model, config)
        total_steps = max(1, config.epochs * len(self.loader))
        self.scheduler = _scheduler(self.optimizer, config, total_steps)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        settings = config.model_dump_json(exclude={"resume", "threads"})
        if checkpoint_key:  # old checkpoints (no key) keep their fingerprint
            settings += "\n" + checkpoint_key
        self.fingerprint = hashlib.sha256(settings.encode()).hexdigest()
        if config.checkpoint_dir is not None and config.resume:
            self._resume()
        # Wrapped after resuming: DDP starts by giving every process rank 0's weights.
        self.net: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

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
                if self.dist.is_main:
                    self._checkpoint(epoch)
                barrier(self.dist)
            if self._out_of_time(start):
                log(
                    f"stopping after epoch {epoch + 1}: "
                    f"the {self.config.max_minutes} min budget is spent"
                )
                break
        self.model.eval()
        self.model = self.model.to(self.home, memory_format=torch.contiguous_format)
        return TrainResult(
            self.model, self.history, time.perf_counter() - start,
            world_size=self.dist.world_size, threads=torch.get_num_threads(),
        )  # fmt: skip

    def _out_of_time(self, start: float) -> bool:
        if self.config.max_minutes is None:
            return False
        elapsed = (time.perf_counter() - start) / 60
        # Every process stops after the same epoch: rank 0's clock decides.
        late = float(elapsed >= self.config.max_minutes and self.dist.is_main)
        return sum_all([late], self.dist)[0] > 0

    def _epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.loader.set_epoch(epoch)
        start, total_loss, steps = time.perf_counter(), 0.0, 0
        with progress() as bar:
            task = bar.add_task(
                f"epoch {epoch + 1}/{self.config.epochs}", total=len(self.loader), status=""
            )
            for inputs, labels in self.loader:
                inputs = inputs.to(self.device).contiguous(memory_format=self.memory_format)
                loss = self.objective(self.net, inputs, labels.to(self.device))
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
        # Batch-norm statistics follow each process's own batches: rank 0's are kept.
        sync_buffers(self.model, self.dist)
        loss_sum, step_sum = sum_all([total_loss, float(steps)], self.dist)
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(step_sum, 1),
            "test_accuracy": self._test_accuracy(),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - start,
        }

    def _test_accuracy(self) -> float:
        inputs, labels = self.data.test_inputs, self.data.test_labels
        if self.dist.enabled:  # each process measures its shard; the counts are summed
            inputs = inputs[self.dist.rank :: self.dist.world_size]
            labels = labels[self.dist.rank :: self.dist.world_size]
        batches = (
            (x.to(self.device), y.to(self.device)) for x, y in TensorLoader(inputs, labels, 512)
        )
        correct = round(accuracy(self.model, batches) * len(labels))
        correct, total = sum_all([float(correct), float(len(labels))], self.dist)
        return correct / total

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
