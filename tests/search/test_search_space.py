"""Search spaces: define-by-run sampling, reproducibility, size, and the registered model."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.models import create_model
from slimkit.search import FmnistSpace, as_space
from slimkit.search._space import enumerate_size
from slimkit.serialize import load_model, save_model


def test_sampling_is_reproducible_by_seed() -> None:
    space = FmnistSpace()
    first = [space.sample(seed=s).arch for s in range(20)]
    again = [space.sample(seed=s).arch for s in range(20)]
    assert first == again
    assert len({str(a) for a in first}) == 20  # different seeds, different architectures
    rng1, rng2 = random.Random(7), random.Random(7)
    assert [space.sample(rng=rng1).params for _ in range(5)] == [
        space.sample(rng=rng2).params for _ in range(5)
    ]


def test_define_by_run_asks_only_the_decisions_that_apply() -> None:
    space = FmnistSpace()
    for seed in range(30):
        sample = space.sample(seed=seed)
        for s, stage in enumerate(sample.arch["stages"]):
            assert len(stage["blocks"]) == sample.params[f"s{s}.depth"]
            for b, block in enumerate(stage["blocks"]):
                assert (f"s{s}.b{b}.expand" in sample.params) == (block["type"] == "mbconv")
                asked_skip = f"s{s}.b{b}.skip" in sample.params
                assert asked_skip == (b > 0 and block["type"] != "residual")
            assert f"s{s}.b{len(stage['blocks'])}.kernel" not in sample.params


def test_closed_form_size_matches_enumeration() -> None:
    small = FmnistSpace(
        stem_widths=(8,), stage_widths=((8, 16), (16,)), strides=(2, 1), depths=(1, 2),
        expansions=(2, 3), kernels=(3, 5), block_types=("plain", "residual", "mbconv"),
    )  # fmt: skip
    assert small.size() == enumerate_size(small) == 5408
    assert FmnistSpace().size() == 91_113_984_000
    tiny = as_space(
        lambda t: [t.suggest_int(f"x{i}", 0, 2) for i in range(t.suggest_int("n", 1, 3))]
    )
    assert tiny.size() == 3 + 9 + 27


def test_an_optuna_trial_drives_the_same_space() -> None:
    space = FmnistSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    arch = space(trial)
    assert space.replay(trial.params).arch == arch


def test_extremes_and_describe() -> None:
    space = FmnistSpace(block_types=("mbconv",))
    big, small = space.extreme(True).arch, space.extreme(False).arch
    assert [s["width"] for s in big["stages"]] == [32, 64, 128]
    assert [len(s["blocks"]) for s in small["stages"]] == [1, 1, 1]
    assert {b["expand"] for s in big["stages"] for b in s["blocks"]} == {6}
    info = space.describe()
    assert info["size"] == space.size() and "s0.b2.expand" in info["decisions"]


def test_searched_model_is_a_registered_model_that_saves_and_loads(tmp_path: Path) -> None:
    space = FmnistSpace()
    x = torch.randn(3, 1, 28, 28)
    for seed in (0, 1, 2):
        arch = space.sample(seed=seed).arch
        model = create_model("fmnist_searched", arch=arch)
        model.train()
        with torch.no_grad():
            model(torch.randn(16, 1, 28, 28))  # non-trivial BatchNorm statistics
        model.eval()
        again = load_model(save_model(model, tmp_path / str(seed)))
        assert torch.equal(model(x), again(x)) and again.slimkit_spec.kwargs["arch"] == arch
        assert model(x).shape == (3, 10)


def test_bad_architectures_are_refused_with_the_field_named() -> None:
    arch = {"stem": 8, "stages": [{"width": 16, "blocks": [{"type": "plain", "skip": True}]}]}
    with pytest.raises(ConfigError, match="stage 0 block 0 has skip=true"):
        create_model("fmnist_searched", arch=arch)
    with pytest.raises(ConfigError, match=r"stages\.0\.blocks\.0\.type"):
        create_model("fmnist_searched", arch={"stages": [{"width": 8, "blocks": [{"type": "x"}]}]})
    with pytest.raises(ConfigError, match="asked twice with different choices"):
        as_space(lambda t: (t.suggest_int("a", 0, 1), t.suggest_int("a", 0, 2))).sample(seed=0)
    with pytest.raises(ConfigError, match="strides has 1 entries"):
        FmnistSpace(strides=(2,))
