from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.errors import SerializationError
from slimkit.models import create_model
from slimkit.serialize import MODEL_FILE, SPEC_FILE, load_model, save_model


def test_reload_gives_identical_outputs_on_real_images(tmp_path: Path, fmnist_small) -> None:
    model = create_model("fmnist_resnet", widths=[8, 16, 24])
    # Non-trivial BatchNorm statistics, so buffers must round-trip too.
    model.train()
    with torch.no_grad():
        model(fmnist_small.train_inputs[:256])
    model.eval()
    folder = save_model(model, tmp_path / "m")
    again = load_model(folder)
    x = fmnist_small.test_inputs[:64]
    assert torch.equal(model(x), again(x))
    kwargs = json.loads((folder / SPEC_FILE).read_text())["model"]["kwargs"]
    assert kwargs["widths"] == [8, 16, 24] and kwargs["stem_width"] == 16


def test_model_without_spec_is_refused_with_a_way_out(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match="register_model"):
        save_model(nn.Linear(2, 2), tmp_path)


def test_incomplete_folder_and_mismatched_weights(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match=SPEC_FILE):
        load_model(tmp_path)
    save_model(create_model("fmnist_tiny"), tmp_path)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    spec["model"]["kwargs"] = {"widths": [4, 4, 4]}
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(SerializationError, match="does not match"):
        load_model(tmp_path)
    assert (tmp_path / MODEL_FILE).is_file()


def test_pruned_model_round_trips_as_structure_edits(tmp_path: Path, fmnist_small) -> None:
    from slimkit.prune import StructuredConfig, prune

    model = create_model("fmnist_resnet", widths=[8, 16, 24]).eval()
    small = prune(model, StructuredConfig(keep=0.5), fmnist_small.example_input(1)).eval()
    folder = save_model(small, tmp_path / "pruned")
    structure = json.loads((folder / SPEC_FILE).read_text())["structure"]
    assert structure["shapes"] and "stem.0" in structure["attributes"]
    again = load_model(folder)
    assert again.stem[0].out_channels == small.stem[0].out_channels < 16
    x = fmnist_small.test_inputs[:32]
    assert torch.equal(small(x), again(x))


def test_model_with_removed_blocks_round_trips(tmp_path: Path, fmnist_small) -> None:
    from slimkit.prune import LayerConfig, drop_layers

    model = create_model("fmnist_resnet", widths=[8, 16, 24], blocks=[2, 2, 2]).eval()
    short = drop_layers(model, LayerConfig(keep=0.5), data=fmnist_small).eval()

    def blocks(m: nn.Module) -> int:
        return sum(type(b).__name__ == "BasicBlock" for b in m.modules())

    assert blocks(short) == blocks(model) - 2  # 2 of the 3 identity-shortcut blocks
    again = load_model(save_model(short, tmp_path / "short"))
    x = fmnist_small.test_inputs[:16]
    assert torch.equal(short(x), again(x))


def test_sparse_weights_are_stored_small_and_reload_exactly(tmp_path: Path, fmnist_small) -> None:
    from slimkit.prune import UnstructuredConfig, sparsify
    from slimkit.serialize import save_weights

    model = create_model("fmnist_resnet", widths=[16, 32, 64]).eval()
    sparse = sparsify(model, UnstructuredConfig(sparsity=0.8), fmnist_small).eval()
    folder = save_model(sparse, tmp_path / "sparse")
    dense_bytes = save_weights(sparse, tmp_path / "dense.safetensors", sparse=False).stat().st_size
    assert (folder / MODEL_FILE).stat().st_size < 0.4 * dense_bytes
    again = load_model(folder)
    for (name, a), b in zip(sparse.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # A dense model stays a plain safetensors file: no sparse entries.
    plain = save_model(model, tmp_path / "dense")
    from safetensors import safe_open

    with safe_open(str(plain / MODEL_FILE), framework="pt") as f:
        assert not any(key.endswith("::mask") for key in f.keys())  # noqa: SIM118
