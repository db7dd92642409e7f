"""Recipe validation: every problem is found before any work, with its YAML line and the fix."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from pydantic import Field

from slimkit.config import Config
from slimkit.data import DataConfig
from slimkit.errors import ConfigError, RecipeError
from slimkit.measure import ProfileConfig
from slimkit.recipe import (
    ModelRef,
    Recipe,
    StepOutput,
    _steps,
    builtin_recipe,
    get_step,
    list_steps,
    load_recipe,
    register_step,
)
from slimkit.serialize import save_model
from slimkit.train import TrainConfig

HEAD = """\
name: bad
model: fmnist_tiny
data: fashion-mnist
steps:
"""  # steps start on line 5


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "needles"),
    [
        pytest.param(
            HEAD + "  - train: {epochs: 1}\n  - trian: {epochs: 1}\n",
            6,
            ["steps[1].trian", "unknown step 'trian'", "did you mean 'train'", "registered steps:"],
            id="unknown-step",
        ),
        pytest.param(
            HEAD
            + "  - train: {epochs: 1}\n  - train:\n      batch_size: 32\n      epochs: three\n",
            8,
            ["steps[1].train.epochs", "valid integer", "'three'"],
            id="wrong-type",
        ),
        pytest.param(
            HEAD + "  - train:\n      epochs: 1\n      lr: -0.1\n",
            7,
            ["steps[0].train.lr", "greater than 0", "-0.1"],
            id="out-of-range",
        ),
        pytest.param(
            HEAD + "  - train: {optimizer: adam}\n",
            5,
            ["steps[0].train.optimizer", "'sgd' or 'adamw'", "'adam'"],
            id="not-an-allowed-value",
        ),
        pytest.param(
            HEAD + "  - train:\n      epoch: 1\n",
            6,
            ["steps[0].train.epoch", "Extra inputs", "allowed fields: epochs, batch_size"],
            id="unknown-step-field",
        ),
        pytest.param(
            "name: bad\nseed: 1\nmodel: fmnist_resnt\ndata: fashion-mnist\nsteps: []\n",
            3,
            [
                "model.name",
                "unknown model 'fmnist_resnt'",
                "fmnist_cnn, fmnist_resnet",
            ],
            id="unknown-model",
        ),
        pytest.param(
            "model:\n  name: fmnist_tiny\n  kwargs:\n    width: 3\n"
            "data: fashion-mnist\nsteps: []\n",
            3,
            ["model.kwargs", "'width'", "it takes: ['num_classes', 'widths']"],
            id="unknown-model-argument",
        ),
        pytest.param(
            "model: {path: no/such/folder}\ndata: fashion-mnist\nsteps: []\n",
            1,
            ["model.path", "no/such/folder", "save_model"],
            id="model-path-not-a-saved-model",
        ),
        pytest.param(
            "model: fmnist_tiny\ndata:\n  train_subset: 100\n  name: mnist\nsteps: []\n",
            4,
            ["data.name", "unknown data set 'mnist'", "fashion-mnist"],
            id="unknown-data-set",
        ),
        pytest.param(
            "model: fmnist_tiny\ndata: fashion-mnist\nprofile:\n  threads: 0\nsteps: []\n",
            4,
            ["profile.threads", "greater than or equal to 1"],
            id="bad-profile",
        ),
        pytest.param(
            HEAD + "  - train: {}\nstep: []\n",
            6,
            ["step: Extra inputs", "allowed fields: name, model, data, seed, profile, steps"],
            id="unknown-top-level-field",
        ),
        pytest.param(
            HEAD + "  - train: {epochs: 1\n  - train: {}\n",
            6,
            ["invalid YAML", "started on line 5"],
            id="malformed-yaml",
        ),
        pytest.param(
            HEAD + "  - train: {}\n    distill: {}\n",
            5,
            ["steps[0]", "one key", "2 keys (train, distill)", "own list item"],
            id="step-with-two-keys",
        ),
        pytest.param(
            HEAD + "  - train: {}\n  - train\n",
            6,
            ["steps[1]", "one-key mapping", "'train'", "- train: {}"],
            id="step-is-a-string",
        ),
        pytest.param(
            HEAD + "  - train: 3\n",
            5,
            ["steps[0].train", "must be a mapping of its fields (epochs, batch_size"],
            id="step-config-not-a-mapping",
        ),
        pytest.param(
            "model: fmnist_tiny\ndata: fashion-mnist\nsteps:\n  train: {}\n",
            3,
            ["steps:", "must be a list", "got a dict"],
            id="steps-not-a-list",
        ),
        pytest.param(
            "model: fmnist_tiny\ndata: fashion-mnist\nmodel: fmnist_cnn\nsteps: []\n",
            3,
            ["model: repeated key"],
            id="repeated-key",
        ),
        pytest.param(
            "data: fashion-mnist\nsteps: []\n", 1, ["model: Field required"], id="missing-model"
        ),
        pytest.param("# nothing\n", 1, ["recipe is empty"], id="empty-file"),
    ],
)
def test_bad_recipe_names_its_line_and_what_is_allowed(
    tmp_path: Path, text: str, line: int, needles: list[str]
) -> None:
    message = _error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:{line}: "), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        HEAD + "  - train: {lr: 0}\n  - trian: {}\n  - train:\n      optimizer: adam\n",
    )
    found = re.findall(r"recipe\.yaml:(\d+): (\S+):", message)
    assert found == [
        ("5", "steps[0].train.lr"),
        ("6", "steps[1].trian"),
        ("8", "steps[2].train.optimizer"),
    ]


def test_text_and_mapping_sources() -> None:
    with pytest.raises(RecipeError, match=r"^<recipe>:3: steps\[0\]\.train\.lr: .*greater than 0"):
        load_recipe("model: fmnist_tiny\ndata: fashion-mnist\nsteps: [train: {lr: 0}]")
    with pytest.raises(RecipeError, match=r"^<recipe>: steps\[0\]\.train\.lr: "):
        load_recipe(
            {"model": "fmnist_tiny", "data": "fashion-mnist", "steps": [{"train": {"lr": 0}}]}
        )
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        load_recipe("no/such/recipe.yaml")


def test_valid_recipe_gives_frozen_validated_configs(tmp_path: Path) -> None:
    saved = save_model(_tiny(), tmp_path / "saved")
    recipe = load_recipe(
        textwrap.dedent(f"""\
        model: {{path: {saved}}}
        data: {{name: fashion-mnist, train_subset: 500}}
        profile: {{threads: 1, throughput_batch: 8}}
        steps:
          - train: {{epochs: 2, lr: 0.1}}
          - train:
        """)
    )
    assert recipe.model == ModelRef(path=saved)
    assert recipe.data == DataConfig(name="fashion-mnist", train_subset=500)
    assert recipe.profile == ProfileConfig(threads=1, throughput_batch=8)
    assert [s.name for s in recipe.steps] == ["train", "train"]
    first, second = (s.config for s in recipe.steps)
    assert first == TrainConfig(epochs=2, lr=0.1) and second == TrainConfig()
    with pytest.raises(Exception, match="frozen"):
        first.epochs = 5  # type: ignore[misc]


def test_shorthands_and_defaults() -> None:
    recipe = load_recipe("model: fmnist_tiny\ndata: fashion-mnist\nsteps: []")
    assert recipe.name is None and recipe.seed == 0 and recipe.steps == ()
    assert recipe.model == ModelRef(name="fmnist_tiny")
    assert recipe.data == DataConfig()
    assert recipe.profile == ProfileConfig()


def test_saved_yaml_reloads_equal() -> None:
    recipe = load_recipe(
        "name: x\nmodel: {name: fmnist_resnet, kwargs: {widths: [8, 16, 32]}}\n"
        "data: fashion-mnist\nseed: 3\nsteps:\n  - train: {epochs: 1, optimizer: adamw}\n"
    )
    text = recipe.to_yaml()
    assert "kwargs:" in text and "optimizer: adamw" in text and "lr: 0.05" in text
    assert load_recipe(text) == recipe
    assert Recipe.model_validate(recipe.to_dict()) == recipe


def test_programmatic_recipe_takes_config_objects() -> None:
    recipe = Recipe(
        model=ModelRef(name="fmnist_tiny", kwargs={"widths": (4, 8, 16)}),
        data=DataConfig(test_subset=10),
        steps=[("train", TrainConfig(epochs=1))],
    )
    assert recipe.steps[0].config == TrainConfig(epochs=1)
    # Tuples are stored as JSON reads them back, so the saved recipe reloads equal.
    assert recipe.model.kwargs == {"widths": [4, 8, 16]}
    assert load_recipe(recipe.to_yaml()) == recipe


def test_builtin_demo_recipe() -> None:
    recipe = load_recipe(builtin_recipe())
    assert recipe.model.name == "fmnist_resnet" and recipe.data.name == "fashion-mnist"
    names = [s.name for s in recipe.steps]
    assert names == ["train", "prune", "decompose", "distill", "quantize", "compile"]
    assert recipe.steps[1].config.target == "macs" and recipe.steps[1].config.keep == 0.5
    with pytest.raises(ConfigError, match="built-in recipes: demo"):
        builtin_recipe("nope")


def test_registry_lists_and_rejects() -> None:
    assert "train" in list_steps()
    assert get_step("train").config_cls is TrainConfig
    with pytest.raises(ConfigError, match=r"registered steps: .*train"):
        get_step("trainn")

    class Loose(Config):
        model_config = {"frozen": False, "extra": "forbid"}  # noqa: RUF012

    with pytest.raises(ConfigError, match="must be frozen"):
        register_step("loose_test", Loose)
    with pytest.raises(ConfigError, match="lower case letters"):
        register_step("Bad Name", TrainConfig)
    with pytest.raises(ConfigError, match=r"already registered by slimkit\.train\._step"):

        @register_step("train", TrainConfig)
        def other_train(model, config, ctx):  # pragma: no cover - never registered
            return model


def test_registered_step_is_validated_in_recipes() -> None:
    class ScaleConfig(Config):
        factor: float = Field(default=1.0, gt=0, le=10)

    @register_step("scale_test", ScaleConfig)
    def scale(model, config, ctx):
        return StepOutput(model)

    try:
        text = "model: fmnist_tiny\ndata: fashion-mnist\nsteps:\n  - scale_test: {factor: 11}\n"
        with pytest.raises(
            RecipeError, match=r":4: steps\[0\]\.scale_test\.factor: .*less than or equal to 10"
        ):
            load_recipe(text)
        recipe = load_recipe(text.replace("11", "2"))
        assert recipe.steps[0].config == ScaleConfig(factor=2)
    finally:
        _steps._STEPS.pop("scale_test")


def _tiny():
    from slimkit.models import create_model

    return create_model("fmnist_tiny")
