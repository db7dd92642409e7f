"""The one-shot supernet on real Fashion-MNIST images: sub-networks, export, training, search."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from slimkit.data import DataSplits
from slimkit.measure import accuracy
from slimkit.search import (
    FmnistSpace,
    SearchConfig,
    Supernet,
    SupernetConfig,
    load_supernet,
    recalibrate_bn,
    search,
    search_splits,
    train_supernet,
)
from slimkit.search._supernet import calibration_batches
from slimkit.serialize import load_model, save_model
from slimkit.train import TrainConfig

SMALL = {"stem_widths": (8, 16), "stage_widths": ((8, 16), (16, 24), (24, 32)), "depths": (1, 2)}


@pytest.mark.parametrize("kind", ["plain", "residual", "dwsep", "mbconv"])
def test_exported_subnetwork_equals_the_supernets(kind: str, fmnist_small: DataSplits) -> None:
    space = FmnistSpace(block_types=(kind,), **SMALL)
    net = Supernet(space)
    x = fmnist_small.test_inputs[:32]
    calib = calibration_batches(fmnist_small, 2, 64)
    for seed in range(4):
        arch = space.sample(seed=seed).arch
        recalibrate_bn(net, calib, arch)
        small = net.export(arch)
        assert small.slimkit_spec.name == "fmnist_searched"
        with torch.no_grad():
            expected = net(x, arch)
        torch.testing.assert_close(small(x), expected, atol=1e-4, rtol=1e-4)
        n_small = sum(p.numel() for p in small.parameters())
        assert n_small < sum(p.numel() for p in net.parameters())
    # The BatchNorm statistics are shared: another sub-network's recalibration changes this
    # one's outputs, and recalibrating it again restores them exactly.
    a, b = space.extreme(True).arch, space.extreme(False).arch
    with torch.no_grad():
        recalibrate_bn(net, calib, a)
        out_a = net(x, a)
        recalibrate_bn(net, calib, b)
        assert not torch.allclose(net(x, a), out_a, atol=1e-3)
        recalibrate_bn(net, calib, a)
        assert torch.equal(net(x, a), out_a)


def _config(space: FmnistSpace, epochs: int, **kw) -> SearchConfig:
    return SearchConfig(
        strategy="evolution", population=4, tournament=2, evaluator="supernet",
        space_options=space.options(), train_subset=None, val_samples=500,
        supernet=SupernetConfig(
            train=TrainConfig(epochs=epochs, lr=0.2, augment=False, threads=1, batch_size=64),
            recalibration_batches=2, recalibration_batch_size=128,
        ), **kw,
    )  # fmt: skip


def test_search_on_inherited_weights_exports_what_it_measured(
    fmnist_small: DataSplits, tmp_path: Path
) -> None:
    space = FmnistSpace(block_types=("plain", "residual"), **SMALL)
    cfg = _config(space, epochs=1, trials=6)
    split = search_splits(fmnist_small, cfg)
    few = replace(
        split, train_inputs=split.train_inputs[:600], train_labels=split.train_labels[:600]
    )
    net = train_supernet(space, few, cfg.supernet)
    folder = net.save(tmp_path / "supernet")
    again = load_supernet(folder)
    x = split.test_inputs[:16]
    arch = space.sample(seed=5).arch
    with torch.no_grad():
        torch.testing.assert_close(again(x, arch), net.eval()(x, arch))
    result = search(cfg.model_copy(update={"supernet_path": folder}), fmnist_small)
    assert len(result.trials) == 6 and result.supernet is not None
    # The exported best model is the sub-network that was measured: same accuracy.
    best = result.model()
    assert accuracy(best, split.test_loader()) == pytest.approx(result.best.metrics["accuracy"])
    reloaded = load_model(save_model(best, tmp_path / "best"))
    assert torch.equal(reloaded(x), best(x))


@pytest.mark.slow
def test_sandwich_training_learns_for_every_subnetwork(fmnist_small: DataSplits) -> None:
    space = FmnistSpace(block_types=("plain", "residual"), **SMALL)
    cfg = _config(space, epochs=2, trials=8)
    net = train_supernet(space, search_splits(fmnist_small, cfg), cfg.supernet)
    assert len(net.history) == 2
    from slimkit.search import CandidateEvaluator

    evaluator = CandidateEvaluator(cfg, search_splits(fmnist_small, cfg), supernet=net)
    accs = [evaluator(space.sample(seed=s).arch).metrics["accuracy"] for s in range(8)]
    assert min(accs) > 0.2 and max(accs) > 0.3, accs  # chance is 0.1
