"""Knowledge distillation through the shared training loop."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from slimkit._runtime import log, num_threads
from slimkit.data import DataSplits
from slimkit.distill._config import DistillConfig, FeatureConfig
from slimkit.distill._hooks import build_adapter, capture_features, check_module_names
from slimkit.distill._loss import attention_loss, hint_loss, kd_loss
from slimkit.errors import ConfigError
from slimkit.train import TrainResult, init_distributed, train, worker_threads
from slimkit.train._distributed import DistInfo, all_gather_rows, broadcast_module

__all__ = ["distill", "run_distillation", "teacher_outputs"]

_FEATURE_LOSSES = {"hint": hint_loss, "attention": attention_loss}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    config: DistillConfig | None = None,
    *,
    teacher_logits: Tensor | None = None,
    history: list[dict[str, float]] | None = None,
) -> nn.Module:
    """Train a copy of ``student`` to imitate ``teacher`` on ``data``; return the trained copy.

    The loss is :func:`kd_loss` on the logits plus the configured feature terms
    (:class:`FeatureConfig`); training is :func:`slimkit.train.train` with ``config.train``, so
    checkpoints, resuming and multi-process data parallel (``torchrun``) work as they do there.
    The teacher runs in eval mode without gradients, on a copy (its own mode is untouched);
    when the inputs do not change between epochs its logits are computed once, before training
    (``config.cache_teacher``). Feature adapters train with the student and are dropped.

    Samples whose label is ``-100`` are unlabeled: they get the soft-target term alone (the
    teacher may see images whose labels the student never gets).

    Args:
        student: The model to train (left untouched).
        teacher: The model to imitate (left untouched); for instance the model before pruning.
        data: Training and test data; test accuracy is measured after every epoch.
        config: The distillation; defaults to :class:`DistillConfig`'s.
        teacher_logits: The teacher's logits on ``data.train_inputs``, computed earlier with
            :func:`teacher_outputs` (to share them between runs); needs a cacheable config.
        history: If given, the per-epoch records (loss, test accuracy, ...) are appended to it.

    Raises:
        ConfigError: a feature names a module that does not exist (with the closest names), the
            two models' outputs or features do not line up, or ``teacher_logits`` do not fit.

    Example:
        >>> from slimkit.data import DataConfig, load_dataset
        >>> from slimkit.models import create_model
        >>> data = load_dataset(DataConfig(train_subset=512, test_subset=256))  # doctest: +SKIP
        >>> cfg = DistillConfig(temperature=4.0, alpha=0.9, train={"epochs": 1, "augment": False})
        >>> student = distill(create_model("fmnist_tiny"), create_model("fmnist_resnet"),
        ...                   data, cfg)  # doctest: +SKIP
    """
    result = run_distillation(student, teacher, data, config, teacher_logits=teacher_logits)
    if history is not None:
        history.extend(result.history)
    return result.model


def run_distillation(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSplits,
    config: DistillConfig | None = None,
    *,
    teacher_logits: Tensor | None = None,
) -> TrainResult:
    """:func:`distill`, returning the loop's :class:`~slimkit.train.TrainResult` (the trained
    student as ``model``, its history and timing)."""
    config = config or DistillConfig()
    check_module_names(student, [f.student for f in config.features], "student")
    check_module_names(teacher, [f.teacher for f in config.features], "teacher")
    _check_given_logits(teacher_logits, data, config)
    info = init_distributed()
    with num_threads(worker_threads(config.train.threads, info)):
        teacher = _frozen_copy(teacher, config, info)
        student = copy.deepcopy(student)
        adapters = _adapters(student, teacher, config, data)
        cached = teacher_logits
        if cached is None and config.caches_teacher:
            log(f"computing the teacher's logits on {len(data.train_inputs)} training samples once")
            cached = teacher_outputs(teacher, data.train_inputs)
        objective = _DistillObjective(config, teacher, cached)
        result = train(
            _StudentWithAdapters(student, config.features, adapters),
            config.train,
            _indexed(data),
            objective=objective,
            checkpoint_key=_checkpoint_key(config, teacher),
        )
    result.model = result.model.student
    return result


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, inputs: Tensor, *, batch_size: int = 512) -> Tensor:
    """The teacher's logits on ``inputs`` (eval mode, no gradients), on the CPU.

    Under ``torchrun`` each process computes every ``world_size``-th sample and the processes
    share the results, so every process returns the logits of all samples.

    Example:
        >>> import torch
        >>> teacher = torch.nn.Linear(3, 2)
        >>> teacher_outputs(teacher, torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """
    info = init_distributed()
    training = teacher.training
    teacher.eval()
    device = next(teacher.parameters(), torch.empty(0)).device
    mine = inputs[info.rank :: info.world_size]
    try:
        parts = [teacher(x.to(device)).float() for x in mine.split(batch_size)]
    finally:
        teacher.train(training)
    return all_gather_rows(torch.cat(parts), len(inputs), info).cpu()


class _StudentWithAdapters(nn.Module):
    """The student and the feature adapters that train with it.

    In training mode ``forward`` returns ``(logits, adapted student features)``; in eval mode,
    the logits alone (so the loop's accuracy sees the student as it is).
    """

    def __init__(
        self, student: nn.Module, features: tuple[FeatureConfig, ...], adapters: list[nn.Module]
    ) -> None:
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleList(adapters)
        self.names = [f.student for f in features]

    def forward(self, inputs: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        if not self.training:
            return self.student(inputs)
        with capture_features(self.student, self.names) as store:
            logits = self.student(inputs)
        pairs = zip(self.adapters, self.names, strict=True)
        return logits, [adapter(store[name]) for adapter, name in pairs]


class _DistillObjective:
    """The loss of one batch; the targets carry ``(label, sample index)`` per sample."""

    def __init__(self, config: DistillConfig, teacher: nn.Module, cached: Tensor | None) -> None:
        self.config, self.teacher = config, teacher
        device = next(teacher.parameters(), torch.empty(0)).device
        self.cached = None if cached is None else cached.to(device)
        self.teacher_names = [f.teacher for f in config.features]

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        labels, index = targets[:, 0], targets[:, 1]
        logits, student_features = model(inputs)
        teacher_logits, teacher_features = self._teacher(inputs, index)
        cfg = self.config
        loss = kd_loss(
            logits, teacher_logits.to(logits.device), None if cfg.soft_only else labels,
            cfg.temperature, cfg.alpha, label_smoothing=cfg.train.label_smoothing,
        )  # fmt: skip
        for feature, s, t in zip(cfg.features, student_features, teacher_features, strict=True):
            loss = loss + feature.weight * _FEATURE_LOSSES[feature.kind](s, t.to(s.device))
        return loss

    @torch.no_grad()
    def _teacher(self, inputs: Tensor, index: Tensor) -> tuple[Tensor, list[Tensor]]:
        if self.cached is not None:
            return self.cached[index.to(self.cached.device)], []
        device = next(self.teacher.parameters(), torch.empty(0)).device
        with capture_features(self.teacher, self.teacher_names) as store:
            logits = self.teacher(inputs.to(device))
        return logits, [store[n] for n in self.teacher_names]


def _frozen_copy(teacher: nn.Module, config: DistillConfig, info: DistInfo) -> nn.Module:
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    if info.device is not None:
        teacher = teacher.to(info.device)
    broadcast_module(teacher, info)  # every process learns from the same teacher: rank 0's
    if config.train.channels_last:  # the loop feeds channels-last batches
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


@torch.no_grad()
def _adapters(
    student: nn.Module, teacher: nn.Module, config: DistillConfig, data: DataSplits
) -> list[nn.Module]:
    """Run both models on two training images: check that they line up, size the adapters."""
    x = data.train_inputs[:2]
    device = next(teacher.parameters(), torch.empty(0)).device
    training = student.training
    student.eval()
    try:
        with capture_features(student, [f.student for f in config.features]) as s_store:
            s_logits = student(x)
        with capture_features(teacher, [f.teacher for f in config.features]) as t_store:
            t_logits = teacher(x.to(device))
    finally:
        student.train(training)
    if s_logits.shape != t_logits.shape:
        raise ConfigError(
            f"the student's outputs {list(s_logits.shape)} and the teacher's "
            f"{list(t_logits.shape)} differ: both must give logits over the same classes."
        )
    # Seeded, and without touching the global generator: the same adapters in every process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        shapes = [(s_store[f.student].shape, t_store[f.teacher].shape) for f in config.features]
        return [
            build_adapter(f.kind, s, t, f"{f.student} -> {f.teacher}")
            for f, (s, t) in zip(config.features, shapes, strict=True)
        ]


def _indexed(data: DataSplits) -> DataSplits:
    """``data`` whose training targets are ``[label, sample index]`` rows (for the cache)."""
    index = torch.arange(len(data.train_labels), dtype=data.train_labels.dtype)
    return dataclasses.replace(data, train_labels=torch.stack([data.train_labels, index], dim=1))


def _check_given_logits(logits: Tensor | None, data: DataSplits, config: DistillConfig) -> None:
    if logits is None:
        return
    if not config.caches_teacher:
        raise ConfigError(
            "teacher_logits were given, but this config runs the teacher on every batch "
            "(train.augment or features): drop teacher_logits or make the config cacheable."
        )
    expected = (len(data.train_inputs), data.num_classes)
    if tuple(logits.shape) != expected:
        raise ConfigError(
            f"teacher_logits have shape {list(logits.shape)}; expected {list(expected)} (one row "
            "per training sample, as teacher_outputs(teacher, data.train_inputs) gives)."
        )


def _checkpoint_key(config: DistillConfig, teacher: nn.Module) -> str:
    shapes = ",".join(f"{n}:{tuple(p.shape)}" for n, p in teacher.named_parameters())
    return "distill " + config.model_dump_json(exclude={"train"}) + " teacher " + shapes
