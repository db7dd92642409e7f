"""Distillation runs on real Fashion-MNIST images: caching, learning, resuming, checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit.train._loop as loop
from slimkit.config import Config
from slimkit.data import DataConfig, DataSplits, load_dataset
from slimkit.distill import IGNORE_INDEX, DistillConfig, distill, teacher_outputs
from slimkit.errors import ConfigError
from slimkit.models import create_model
from slimkit.train import TrainConfig, train
from slimkit.train._checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def teacher(fmnist_small: DataSplits) -> nn.Module:
    """fmnist_tiny trained on 2,000 real images (about 70 % test accuracy)."""
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.1, augment=False, threads=1)
    return train(create_model("fmnist_tiny"), cfg, fmnist_small).model


@pytest.fixture(scope="module")
def small_data() -> DataSplits:
    return load_dataset(DataConfig(train_subset=384, test_subset=256))


def _student(widths: tuple[int, ...] = (8, 16, 32)) -> nn.Module:
    torch.manual_seed(1)
    return create_model("fmnist_tiny", widths=widths)


def _counting(model: nn.Module) -> tuple[nn.Module, list[int]]:
    calls: list[int] = []
    # A forward hook survives the deep copies distill makes: it counts the teacher's batches.
    model.register_forward_hook(lambda m, a, o: calls.append(len(o)))
    return model, calls


def test_cached_teacher_gives_the_same_training_as_running_it(
    teacher: nn.Module, small_data: DataSplits
) -> None:
    train_cfg = {"epochs": 2, "batch_size": 64, "augment": False, "threads": 1}
    runs = {}
    for cache in (True, False):
        counted, calls = _counting(_copy(teacher))
        history: list[dict[str, float]] = []
        cfg = DistillConfig(temperature=3.0, alpha=0.7, cache_teacher=cache, train=train_cfg)
        runs[cache] = (distill(_student(), counted, small_data, cfg, history=history), history)
        # The probe batch of 2 images, then one pass over the data (cached) or every batch.
        batches = [n for n in calls if n != 2]
        assert sum(batches) == (384 if cache else 2 * (384 // 64) * 64)
    (cached, h_cached), (uncached, h_uncached) = runs[True], runs[False]
    for a, b in zip(h_cached, h_uncached, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    for p, q in zip(cached.parameters(), uncached.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4)
    # Logits computed beforehand and passed in: the same run again.
    logits = teacher_outputs(teacher, small_data.train_inputs)
    cfg = DistillConfig(temperature=3.0, alpha=0.7, train=train_cfg)
    given = distill(_student(), teacher, small_data, cfg, teacher_logits=logits)
    for p, q in zip(given.parameters(), cached.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4)


def test_distillation_learns_far_above_chance_and_leaves_the_inputs_alone(
    teacher: nn.Module, fmnist_small: DataSplits
) -> None:
    teacher.train()  # distill must evaluate it in eval mode, on a copy
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _student((16, 32, 64))
    start = [p.clone() for p in student.parameters()]
    cfg = DistillConfig(temperature=4.0, alpha=0.9, train={"epochs": 3, "batch_size": 64,
                        "lr": 0.1, "augment": False, "threads": 1})  # fmt: skip
    history: list[dict[str, float]] = []
    out = distill(student, teacher, fmnist_small, cfg, history=history)
    # 2,000 images, 3 epochs, 10 classes: far above the 10 % of chance on 1,000 test images
    # (labels alone reach about 70 % in this short run, the teacher about 70 %).
    assert history[-1]["test_accuracy"] >= 0.45
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(a, b) for a, b in zip(start, student.parameters(), strict=True))
    assert not out.training and hasattr(out, "slimkit_spec")


def test_soft_targets_teach_unlabeled_images(teacher: nn.Module, fmnist_small: DataSplits) -> None:
    """Labels hidden for 95 % of the images: those learn from the teacher alone."""
    labels = fmnist_small.train_labels.clone()
    labels[100:] = IGNORE_INDEX
    partly = dataclasses.replace(fmnist_small, train_labels=labels)
    cfg = DistillConfig(temperature=4.0, alpha=0.5, train={"epochs": 3, "batch_size": 64,
                        "lr": 0.1, "augment": False, "threads": 1})  # fmt: skip
    history: list[dict[str, float]] = []
    distill(_student(), teacher, partly, cfg, history=history)
    assert history[-1]["test_accuracy"] >= 0.35
    # Pure soft targets (labels never read) learn too.
    hidden = dataclasses.replace(fmnist_small, train_labels=torch.zeros_like(labels))
    soft = cfg.model_copy(update={"soft_only": True})
    distill(_student(), teacher, hidden, soft, history=(h := []))
    assert h[-1]["test_accuracy"] >= 0.35


def test_an_interrupted_run_resumes_from_its_checkpoint(
    teacher: nn.Module, small_data: DataSplits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_cfg = {"epochs": 2, "batch_size": 64, "augment": False, "threads": 1}
    cfg = DistillConfig(train={**train_cfg, "checkpoint_dir": tmp_path / "ckpt"})
    uninterrupted = distill(_student(), teacher, small_data, DistillConfig(train=train_cfg))

    original = loop._Trainer._checkpoint

    def checkpoint_then_stop(self: loop._Trainer, epoch: int) -> None:
        original(self, epoch)
        raise KeyboardInterrupt  # as a kill right after the first epoch's checkpoint

    monkeypatch.setattr(loop._Trainer, "_checkpoint", checkpoint_then_stop)
    with pytest.raises(KeyboardInterrupt):
        distill(_student(), teacher, small_data, cfg)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ckpt")["epoch"] == 0

    history: list[dict[str, float]] = []
    resumed = distill(_student(), teacher, small_data, cfg, history=history)
    assert [h["epoch"] for h in history] == [1, 2]
    assert load_checkpoint(tmp_path / "ckpt")["epoch"] == 1
    # The resumed run ends exactly where the uninterrupted one did.
    expected = uninterrupted.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.allclose(value.float(), expected[name].float(), atol=1e-6), name

    # A checkpoint written with other distillation settings is not resumed.
    other = cfg.model_copy(update={"temperature": 2.0})
    distill(_student(), teacher, small_data, other, history=(h := []))
    assert [r["epoch"] for r in h] == [1, 2]


def test_configs_that_cannot_work_are_refused_before_training(
    teacher: nn.Module, small_data: DataSplits
) -> None:
    with pytest.raises(ConfigError, match="augment"):
        DistillConfig.parse({"cache_teacher": True, "train": {"augment": True}})
    with pytest.raises(ConfigError, match="features"):
        DistillConfig.parse({"cache_teacher": True, "train": {"augment": False},
                             "features": [{"student": "2", "teacher": "2"}]})  # fmt: skip
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig.parse({"alpha": 1.5})
    cfg = DistillConfig(train={"augment": False})
    with pytest.raises(ConfigError, match="expected \\[384, 10\\]"):
        distill(_student(), teacher, small_data, cfg, teacher_logits=torch.zeros(10, 10))
    augmenting = DistillConfig(train={"augment": True})
    with pytest.raises(ConfigError, match="every batch"):
        distill(_student(), teacher, small_data, augmenting, teacher_logits=torch.zeros(384, 10))
    assert DistillConfig().caches_teacher is False  # augmentation is on by default
    assert isinstance(DistillConfig(), Config)


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
