"""Save and load models as data: safetensors weights plus a JSON description of the structure.

Nothing is pickled: the structure is rebuilt from the model registry (name and keyword
arguments), then reshaped by the recorded edits (the shapes of tensors that pruning changed and
the module attributes that changed with them, such as ``out_channels``), then the weights are
loaded from safetensors.

Example:
    >>> import tempfile, torch
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_tiny").eval()
    >>> folder = save_model(model, tempfile.mkdtemp())
    >>> again = load_model(folder)
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.equal(model(x), again(x))
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save_model as _save_safetensors
from torch import nn

from slimkit._io import atomic_path, write_json
from slimkit.errors import SerializationError
from slimkit.models import ModelSpec, create_model

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "SPEC_FILE",
    "load_model",
    "model_spec",
    "save_model",
    "save_weights",
]

FORMAT = "slimkit-model"
VERSION = 1
MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"


def model_spec(model: nn.Module) -> ModelSpec:
    """The registry spec a model was built from, or a clear error if it has none."""
    spec = getattr(model, "slimkit_spec", None)
    if not isinstance(spec, ModelSpec):
        raise SerializationError(
            f"{type(model).__name__} was not built by slimkit.models.create_model, so its "
            "structure cannot be saved as data. Register its builder with "
            "@slimkit.models.register_model and create it with create_model(name), or save only "
            "its weights with save_weights()."
        )
    return spec


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the model's parameters and buffers to a safetensors file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # safetensors' save_model handles tied weights, which save_file refuses.
        _save_safetensors(model, str(tmp), metadata={"format": FORMAT})
    return path


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` and return the folder.

    The JSON is written last, so a folder with a ``model.json`` always holds matching weights.
    """
    spec = model_spec(model)
    structure = structure_edits(create_model(spec.name, **spec.kwargs), model)
    folder = Path(folder)
    save_weights(model, folder / MODEL_FILE)
    meta = {"format": FORMAT, "version": VERSION, "model": _jsonable(spec.to_dict())}
    write_json(folder / SPEC_FILE, {**meta, "structure": structure})
    return folder


def structure_edits(reference: nn.Module, model: nn.Module) -> dict[str, Any]:
    """How ``model`` differs from a fresh ``reference`` of the same spec, as JSON data.

    ``shapes`` lists tensors whose shape changed, ``attributes`` the plain-valued module
    attributes (ints, floats, strings, tuples of them) that changed, ``identities`` the modules
    replaced by ``nn.Identity`` (removed blocks); that is all pruning changes. Any other
    replaced module cannot be described this way and is refused.
    """
    ref_modules = dict(reference.named_modules())
    attributes: dict[str, dict[str, Any]] = {}
    identities: list[str] = []
    for name, module in model.named_modules():
        ref = ref_modules.get(name)
        if isinstance(module, nn.Identity) and ref is not None and type(ref) is not nn.Identity:
            identities.append(name)
            continue
        if ref is None or type(ref) is not type(module):
            raise SerializationError(
                f"module {name!r} is a {type(module).__name__} but the registered model has "
                f"{type(ref).__name__ if ref is not None else 'nothing'} there: only resized "
                "modules can be saved as structure edits."
            )
        changed = {
            k: _jsonable(v)
            for k, v in vars(module).items()
            if not k.startswith("_") and _plain(v) and vars(ref).get(k) != v
        }
        if changed:
            attributes[name] = changed
    ref_tensors = _tensors(reference)
    shapes = {
        fqn: list(t.shape)
        for fqn, t in _tensors(model).items()
        if fqn in ref_tensors and ref_tensors[fqn].shape != t.shape
    }
    return {"identities": identities, "shapes": shapes, "attributes": attributes}


def _apply_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    for name in structure.get("identities", []):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    for fqn, shape in structure.get("shapes", {}).items():
        module_name, _, attr = fqn.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, attr)
        new = torch.empty(shape, dtype=old.dtype)
        if isinstance(old, nn.Parameter):
            setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            module._buffers[attr] = new
    for name, attrs in structure.get("attributes", {}).items():
        module = model.get_submodule(name)
        for key, value in attrs.items():
            current = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(current, tuple) else value)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters()) | dict(model.named_buffers())


def _plain(value: Any) -> bool:
    if isinstance(value, bool | int | float | str):
        return True
    items = value if isinstance(value, tuple | list) else [object()]
    return all(isinstance(v, bool | int | float | str) for v in items)


def load_model(folder: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model`, in eval mode."""
    folder = Path(folder)
    spec_path, weights_path = folder / SPEC_FILE, folder / MODEL_FILE
    if not spec_path.is_file() or not weights_path.is_file():
        raise SerializationError(
            f"{folder} is not a saved slimkit model: it needs {SPEC_FILE} and {MODEL_FILE}."
        )
    try:
        meta = json.loads(spec_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SerializationError(f"{spec_path} is not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise SerializationError(
            f"{spec_path} has format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this slimkit reads {FORMAT!r} version {VERSION}."
        )
    spec = meta["model"]
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    _apply_structure(model, meta.get("structure", {}))
    _load_state(model, load_file(str(weights_path)), weights_path)
    return model.eval()


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise SerializationError(
            f"{path} does not match the model's structure: {len(wrong)} tensor(s) differ in shape, "
            f"e.g. {k} is {tuple(state[k].shape)} in the file and "
            f"{tuple(expected[k].shape)} in the model."
        )
    # Tied weights are stored once by safetensors; strict=False then check what is really missing.
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(
        dict(model.named_parameters())
    )
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise SerializationError(
            f"{path} does not match the model's structure: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj
