from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slimkit.models import create_model
from slimkit.train import TrainConfig, train
from slimkit.train._checkpoint import load_checkpoint


def test_training_reaches_real_accuracy_on_a_fashion_mnist_subset(fmnist_small) -> None:
    model = create_model("fmnist_cnn", channels=[16, 32], hidden=128)
    before = [p.clone() for p in model.parameters()]
    result = train(model, TrainConfig(epochs=3, lr=0.05, batch_size=32, threads=2), fmnist_small)
    # 2,000 images, 3 epochs: far above the 10 % of chance, on 1,000 real test images.
    assert result.test_accuracy >= 0.70
    assert len(result.history) == 3
    # The input model is left untouched.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_same_seed_same_result(fmnist_small) -> None:
    cfg = TrainConfig(epochs=1, seed=7, threads=1)
    torch.manual_seed(0)
    a = train(create_model("fmnist_tiny"), cfg, fmnist_small)
    torch.manual_seed(0)
    b = train(create_model("fmnist_tiny"), cfg, fmnist_small)
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-6)


def test_divergence_is_reported(fmnist_small) -> None:
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(
            create_model("fmnist_tiny"),
            TrainConfig(epochs=1, lr=1e6, schedule="constant"),
            fmnist_small,
        )


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """A run killed with SIGKILL after its first epoch continues from epoch 2, not from scratch."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from slimkit.data import DataConfig, load_dataset
        from slimkit.models import create_model
        from slimkit.train import TrainConfig, train
        import slimkit.train._loop as loop
        data = load_dataset(DataConfig(train_subset=256, test_subset=128))
        cfg = TrainConfig(epochs=3, threads=1, checkpoint_dir={str(tmp_path)!r})
        if os.environ.get("KILL_AFTER_FIRST"):
            original = loop._Trainer._checkpoint
            def checkpoint_then_die(self, epoch):
                original(self, epoch)
                os.kill(os.getpid(), signal.SIGKILL)
            loop._Trainer._checkpoint = checkpoint_then_die
        result = train(create_model("fmnist_tiny"), cfg, data)
        print("EPOCHS", [int(h["epoch"]) for h in result.history])
        """
    )
    env = {**os.environ, "KILL_AFTER_FIRST": "1", "SLIMKIT_PROGRESS": "0"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path)["epoch"] == 0
    env.pop("KILL_AFTER_FIRST")
    resumed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr or "EPOCHS [1, 2, 3]" in resumed.stdout
    assert "EPOCHS [1, 2, 3]" in resumed.stdout
    assert load_checkpoint(tmp_path)["epoch"] == 2
