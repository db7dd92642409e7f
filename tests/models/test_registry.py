from __future__ import annotations

import pytest
import torch

from slimkit.errors import ConfigError
from slimkit.models import create_model, list_models, model_info


@pytest.mark.parametrize("name", ["fmnist_resnet", "fmnist_cnn", "fmnist_tiny"])
def test_reference_models_map_images_to_ten_logits(name: str) -> None:
    model = create_model(name).eval()
    out = model(torch.randn(3, *model_info(name).input_shape))
    assert out.shape == (3, 10)


def test_tiny_student_is_at_most_a_tenth_of_the_resnet() -> None:
    def params(name: str) -> int:
        return sum(p.numel() for p in create_model(name).parameters())

    assert params("fmnist_tiny") * 10 <= params("fmnist_resnet")


def test_resnet_has_batchnorm_and_residual_projection() -> None:
    model = create_model("fmnist_resnet")
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"BatchNorm2d", "BasicBlock"} <= kinds


def test_unknown_model_and_argument_errors_name_the_choices() -> None:
    with pytest.raises(ConfigError, match="fmnist_resnet"):
        create_model("resnet9000")
    with pytest.raises(ConfigError, match="widths"):
        create_model("fmnist_resnet", depth=3)


def test_kwargs_change_the_architecture_and_are_recorded() -> None:
    model = create_model("fmnist_resnet", widths=[8, 16, 32])
    assert model.fc.in_features == 32
    assert model.slimkit_spec.kwargs["widths"] == [8, 16, 32]
    assert model.slimkit_spec.kwargs["stem_width"] == 16  # defaults are recorded too
    assert "fmnist_tiny" in list_models("fmnist_t*")
