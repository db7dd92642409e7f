"""Features by module name: hooks on nested modules and pruned copies, adapters, name errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.data import DataConfig, DataSplits, load_dataset
from slimkit.distill import DistillConfig, FeatureConfig, capture_features, distill
from slimkit.distill._hooks import build_adapter
from slimkit.errors import ConfigError
from slimkit.models import create_model
from slimkit.prune import StructuredConfig, prune
from slimkit.train._checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny_data() -> DataSplits:
    return load_dataset(DataConfig(train_subset=256, test_subset=128))


def test_hooks_capture_nested_modules_and_are_removed() -> None:
    torch.manual_seed(0)
    model = create_model("fmnist_resnet").eval()
    x = torch.randn(3, 1, 28, 28)
    names = ["stages.1", "stages.1.0.conv2", "stages.2.0.shortcut.0", "fc"]
    with torch.no_grad(), capture_features(model, names) as features:
        logits = model(x)
        # The same values as running the nested modules by hand.
        h = model.stages[1](model.stages[0](model.stem(x)))
    assert torch.equal(features["stages.1"], h)
    assert features["stages.1.0.conv2"].shape == (3, 64, 7, 7)
    assert features["stages.2.0.shortcut.0"].shape == (3, 128, 4, 4)
    assert torch.equal(features["fc"], logits)
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_work_on_a_pruned_copy_of_the_teacher() -> None:
    torch.manual_seed(0)
    model = create_model("fmnist_tiny").eval()
    pruned = prune(model, StructuredConfig(keep=0.5, scope="local"), torch.zeros(1, 1, 28, 28))
    with torch.no_grad(), capture_features(pruned, ["5"]) as features:
        pruned(torch.zeros(2, 1, 28, 28))
    assert features["5"].shape == (2, 16, 14, 14)  # 32 channels, half kept
    adapter = build_adapter("hint", (2, 8, 14, 14), features["5"].shape, "x")
    assert isinstance(adapter, nn.Conv2d)
    assert (adapter.in_channels, adapter.out_channels) == (8, 16)


def test_adapters_follow_the_feature_shapes() -> None:
    assert isinstance(build_adapter("hint", (2, 8, 7, 7), (2, 8, 4, 4), "x"), nn.Identity)
    linear = build_adapter("hint", (2, 5, 16), (2, 5, 32), "x")
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (32, 16)
    assert isinstance(build_adapter("attention", (2, 8, 7, 7), (2, 64, 7, 7), "x"), nn.Identity)
    with pytest.raises(ConfigError, match=r"attention transfer .* needs \[N, C, H, W\]"):
        build_adapter("attention", (2, 8), (2, 8), "a -> b")
    with pytest.raises(ConfigError, match="differ in more than their last"):
        build_adapter("hint", (2, 5, 16), (2, 6, 16), "a -> b")


def test_a_module_name_that_matches_nothing_is_an_error_with_the_close_names(
    tiny_data: DataSplits,
) -> None:
    student, teacher = create_model("fmnist_tiny"), create_model("fmnist_resnet")
    cfg = DistillConfig(features=[FeatureConfig(student="5", teacher="stage.1")])
    with pytest.raises(ConfigError, match=r"the teacher has no module 'stage\.1' \(did you") as e:
        distill(student, teacher, tiny_data, cfg)
    assert "'stages.1'" in str(e.value)
    cfg = DistillConfig(features=[FeatureConfig(student="55", teacher="stages.1")])
    with pytest.raises(ConfigError, match="the student has no module '55'"):
        distill(student, teacher, tiny_data, cfg)


def test_outputs_of_other_widths_are_refused(tiny_data: DataSplits) -> None:
    with pytest.raises(ConfigError, match="same classes"):
        distill(create_model("fmnist_tiny", num_classes=5), create_model("fmnist_tiny"), tiny_data)


def test_feature_distillation_trains_adapters_and_returns_the_plain_student(
    tiny_data: DataSplits, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    teacher = create_model("fmnist_resnet")
    student = create_model("fmnist_tiny")
    features = [
        # 16 channels at 28x28 -> 32 channels at 14x14: a 1x1 conv adapter, then pooling.
        FeatureConfig(student="2", teacher="stages.0", kind="hint", weight=0.5),
        # 64 channels at 7x7 -> 128 at 4x4: attention maps, pooled to 4x4.
        FeatureConfig(student="8", teacher="stages.2", kind="attention", weight=10.0),
    ]
    train = {"epochs": 1, "batch_size": 64, "augment": False, "threads": 1,
             "checkpoint_dir": tmp_path}  # fmt: skip
    history: list[dict[str, float]] = []
    out = distill(student, teacher, tiny_data, DistillConfig(features=features, train=train),
                  history=history)  # fmt: skip
    assert type(out) is type(student) and not out.training
    assert set(out.state_dict()) == set(student.state_dict())  # adapters dropped
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    # The adapter trained with the student: it is in the checkpoint, moved from its start.
    state = load_checkpoint(tmp_path)["model"]
    assert state["adapters.0.weight"].shape == (32, 16, 1, 1)
    with torch.random.fork_rng(devices=[]):  # distill seeds the adapters with the train seed
        torch.manual_seed(0)
        start = nn.Conv2d(16, 32, 1)
    assert not torch.allclose(state["adapters.0.weight"], start.weight)
    assert "adapters.1.weight" not in state  # attention needs no adapter
    # The student's weights changed, the input models did not.
    assert not torch.equal(out[0].weight, student[0].weight)
