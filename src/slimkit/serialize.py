"""Save and load models as data: safetensors weights plus a JSON description of the structure.

Nothing is pickled: the structure is rebuilt from the model registry (name and keyword
arguments), then reshaped by the recorded edits (the shapes of tensors that pruning changed and
the module attributes that changed with them, such as ``out_channels``), then the weights are
loaded from safetensors. Folded and quantized models are edits too: tensors the registered model
lacks (a bias created by folding batch norm, quantization parameters) and layers whose class
became a registered subclass (a fake-quantized ``Conv2d``, see :func:`register_module_type`).
Weights that are mostly zeros (unstructured pruning) are stored as a bitmask plus their non-zero
values (see :mod:`slimkit._storage`) when that is smaller, so the file size, which the profiler
reports, is what a sparse model really costs on disk.

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

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model as _save_safetensors
from torch import nn

from slimkit._io import atomic_path, write_json
from slimkit._storage import load_sparse_state, save_sparse, sparse_pays
from slimkit.errors import SerializationError
from slimkit.models import ModelSpec, create_model

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "SPEC_FILE",
    "load_model",
    "model_spec",
    "register_module_type",
    "save_model",
    "save_weights",
]

FORMAT = "slimkit-model"
VERSION = 1
MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"

_MODULE_TYPES: dict[str, type[nn.Module]] = {}
# Modules that register slimkit's own module types, imported when a saved model names a type
# not registered yet (so load_model works without importing slimkit.quantize first).
_BUILTIN_MODULE_TYPES = ("slimkit.quantize._fake", "slimkit.compile._passes")


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


def save_weights(model: nn.Module, path: str | Path, *, sparse: bool = True) -> Path:
    """Write the model's parameters and buffers to a safetensors file, atomically.

    With ``sparse`` (the default), tensors that are smaller stored as bitmask + non-zero values
    are written that way (exactly; :func:`load_model` reads both forms). A model with no such
    tensor, or ``sparse=False``, gives a plain safetensors file that any tool reads.
    """
    path = Path(path)
    if sparse and sparse_pays(model.state_dict()):
        return save_sparse(model, path)
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


def register_module_type(cls: type[nn.Module], name: str | None = None) -> type[nn.Module]:
    """Let models holding ``cls`` modules be saved as structure edits, under ``name``.

    ``cls`` must subclass the layer it replaces (``QuantConv2d`` is an ``nn.Conv2d``) and add
    only parameters, buffers and plain attributes (ints, floats, strings, tuples of them), which
    the edits record. Loading rebuilds the registered model, turns the layer into ``cls`` in
    place (its ``__class__``; no constructor runs), adds the recorded tensors and sets the
    recorded attributes. Usable as a class decorator.

    Example:
        >>> from torch import nn
        >>> @register_module_type
        ... class DocScaledLinear(nn.Linear):
        ...     def forward(self, x):
        ...         return super().forward(x) * self.factor
        >>> sorted(n for n in _MODULE_TYPES if n.startswith("Doc"))
        ['DocScaledLinear']
    """
    key = name or cls.__name__
    known = _MODULE_TYPES.get(key)
    same = known is not None and (known.__module__, known.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    )  # a re-executed definition (module reload, doctest) replaces its earlier self
    if known is not None and not same:
        raise SerializationError(
            f"module type {key!r} is already registered for {known.__module__}.{known.__name__}."
        )
    _MODULE_TYPES[key] = cls
    return cls


def _module_type_name(cls: type[nn.Module]) -> str | None:
    return next((k for k, v in _MODULE_TYPES.items() if v is cls), None)


def _module_type(name: str) -> type[nn.Module]:
    if name not in _MODULE_TYPES:
        for provider in _BUILTIN_MODULE_TYPES:
            importlib.import_module(provider)
    if name not in _MODULE_TYPES:
        raise SerializationError(
            f"module type {name!r} is not registered: import the package that defines it "
            "(it calls slimkit.serialize.register_module_type) before load_model."
        )
    return _MODULE_TYPES[name]


def _conv_args(module: nn.Module) -> dict[str, Any]:
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
             "groups", "padding_mode")  # fmt: skip
    return {**{n: getattr(module, n) for n in names}, "bias": module.bias is not None}


def _linear_args(module: nn.Module) -> dict[str, Any]:
    return {"in_features": module.in_features, "out_features": module.out_features,
            "bias": module.bias is not None}  # fmt: skip


# The torch.nn classes a replaced module may be built from (see structure_edits), each with the
# reader of its constructor arguments.
_REPLACEMENT_TYPES: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]]]] = {
    "Sequential": (nn.Sequential, lambda m: {}),
    "Identity": (nn.Identity, lambda m: {}),
    "Linear": (nn.Linear, _linear_args),
    "Conv1d": (nn.Conv1d, _conv_args),
    "Conv2d": (nn.Conv2d, _conv_args),
}


def _describe(module: nn.Module) -> dict[str, Any] | None:
    """A replaced module as data: class name, constructor arguments, children; ``None`` when
    it holds anything outside ``_REPLACEMENT_TYPES`` (a registered subclass of one of them is
    described as that class; its own edits are recorded as for any module)."""
    name = next((k for k, (cls, _) in _REPLACEMENT_TYPES.items() if type(module) is cls), None)
    if name is None and _module_type_name(type(module)) is not None:
        name = next((k for k, (cls, _) in _REPLACEMENT_TYPES.items()
                     if isinstance(module, cls)), None)  # fmt: skip
    if name is None or (name != "Sequential" and len(module._modules)):
        return None
    children = {}
    for child_name, child in module.named_children():
        described = _describe(child)
        if described is None:
            return None
        children[child_name] = described
    args = _REPLACEMENT_TYPES[name][1](module)
    return {"type": name, "args": _jsonable(args), "children": children}


def _build(tree: dict[str, Any]) -> nn.Module:
    """The module :func:`_describe` described (fresh parameters; the weights load later)."""
    name = tree.get("type")
    if name not in _REPLACEMENT_TYPES:
        raise SerializationError(
            f"replaced module type {name!r} is not one slimkit can rebuild; known: "
            f"{sorted(_REPLACEMENT_TYPES)}."
        )
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in tree.get("args", {}).items()}
    module = _REPLACEMENT_TYPES[name][0](**args)
    for child_name, child in tree.get("children", {}).items():
        module.add_module(child_name, _build(child))
    return module


def _replacements(reference: nn.Module, model: nn.Module) -> dict[str, dict[str, Any]]:
    """Modules of ``model`` that replace a module of another class in ``reference`` and are
    built only from ``_REPLACEMENT_TYPES`` (a layer factorized into an ``nn.Sequential``)."""
    ref_modules = dict(reference.named_modules())
    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{r}.") for r in found):
            continue
        ref = ref_modules.get(name)
        if ref is None or type(ref) is type(module) or isinstance(module, nn.Identity):
            continue
        if _module_type_name(type(module)) is not None and isinstance(module, type(ref)):
            continue  # a registered subclass of the same layer: module_types
        tree = _describe(module)
        if tree is not None:
            found[name] = tree
    return found


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def structure_edits(reference: nn.Module, model: nn.Module) -> dict[str, Any]:
    """How ``model`` differs from a fresh ``reference`` of the same spec, as JSON data.

    ``shapes`` lists tensors whose shape changed, ``dtypes`` those whose dtype changed,
    ``added`` the tensors the reference lacks (a bias created by folding batch norm, the
    quantization parameters of a quantized layer: shape, dtype and whether parameter or buffer),
    ``attributes`` the plain-valued module attributes (ints, floats, strings, tuples of them)
    that changed or were added, ``identities`` the modules replaced by ``nn.Identity`` (removed
    blocks), ``module_types`` the modules whose class became a registered subclass of their own
    (see :func:`register_module_type`), ``replaced`` the modules replaced by a tree of plain
    ``torch.nn`` layers (``Sequential``, ``Conv1d``, ``Conv2d``, ``Linear``, ``Identity``; a
    factorized layer), as class names, constructor arguments and children. Those are applied
    to ``reference`` (which is modified) before the other edits are computed, so later edits
    inside them (pruning, quantization) are recorded as for any module. Any other replaced
    module cannot be described this way and is refused.
    """
    replaced = _replacements(reference, model)
    for name, tree in replaced.items():
        _set_module(reference, name, _build(tree))
    ref_modules = dict(reference.named_modules())
    attributes: dict[str, dict[str, Any]] = {}
    identities: list[str] = []
    module_types: dict[str, str] = {}
    for name, module in model.named_modules():
        ref = ref_modules.get(name)
        if isinstance(module, nn.Identity) and ref is not None and type(ref) is not nn.Identity:
            identities.append(name)
            continue
        if ref is not None and type(ref) is not type(module):
            registered = _module_type_name(type(module))
            if registered is None or not isinstance(module, type(ref)):
                raise SerializationError(
                    f"module {name!r} is a {type(module).__name__} but the registered model has "
                    f"a {type(ref).__name__} there: only resized modules, modules replaced by "
                    "nn.Identity or by plain layers (Sequential, Conv1d/2d, Linear), and "
                    "registered subclasses (register_module_type) can be saved as structure edits."
                )
            module_types[name] = registered
        elif ref is None:
            raise SerializationError(
                f"module {name!r} ({type(module).__name__}) does not exist in the registered "
                "model: added modules cannot be saved as structure edits."
            )
        changed = {
            k: _jsonable(v)
            for k, v in vars(module).items()
            if not k.startswith("_") and _plain(v) and vars(ref).get(k) != v
        }
        if changed:
            attributes[name] = changed
    ref_tensors = _tensors(reference)
    tensors = _tensors(model)
    shapes = {
        fqn: list(t.shape)
        for fqn, t in tensors.items()
        if fqn in ref_tensors and ref_tensors[fqn].shape != t.shape
    }
    dtypes = {
        fqn: _dtype_name(t.dtype)
        for fqn, t in tensors.items()
        if fqn in ref_tensors and ref_tensors[fqn].dtype != t.dtype
    }
    params = dict(model.named_parameters())
    added = {
        fqn: {
            "shape": list(t.shape),
            "dtype": _dtype_name(t.dtype),
            "kind": "parameter" if fqn in params else "buffer",
        }
        for fqn, t in tensors.items()
        if fqn not in ref_tensors
    }
    return {
        "replaced": replaced,
        "identities": identities,
        "module_types": module_types,
        "shapes": shapes,
        "dtypes": dtypes,
        "added": added,
        "attributes": attributes,
    }


def _apply_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    for name, tree in structure.get("replaced", {}).items():
        _set_module(model, name, _build(tree))
    for name in structure.get("identities", []):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    for name, type_name in structure.get("module_types", {}).items():
        module, cls = model.get_submodule(name), _module_type(type_name)
        if not issubclass(cls, type(module)):
            raise SerializationError(
                f"module {name!r} is a {type(module).__name__}; the saved {type_name} does not "
                "derive from it."
            )
        module.__class__ = cls
    shapes, dtypes = structure.get("shapes", {}), structure.get("dtypes", {})
    for fqn in [*shapes, *(k for k in dtypes if k not in shapes)]:
        module_name, _, attr = fqn.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, attr)
        shape = shapes.get(fqn, list(old.shape))
        dtype = _dtype(dtypes[fqn]) if fqn in dtypes else old.dtype
        new = torch.empty(shape, dtype=dtype)
        if isinstance(old, nn.Parameter):
            requires_grad = old.requires_grad and dtype.is_floating_point
            setattr(module, attr, nn.Parameter(new, requires_grad=requires_grad))
        else:
            module._buffers[attr] = new
    for fqn, info in structure.get("added", {}).items():
        module_name, _, attr = fqn.rpartition(".")
        module = model.get_submodule(module_name)
        dtype = _dtype(info["dtype"])
        new = torch.empty(info["shape"], dtype=dtype)
        if info.get("kind") == "parameter":
            module.register_parameter(
                attr, nn.Parameter(new, requires_grad=dtype.is_floating_point)
            )
        else:
            module.register_buffer(attr, new)
    for name, attrs in structure.get("attributes", {}).items():
        module = model.get_submodule(name)
        for key, value in attrs.items():
            current = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(current, tuple) else value)
    io_dtype = getattr(model, "slimkit_io_dtype", None)
    if isinstance(io_dtype, str):
        # A float16/bfloat16 model casts its inputs and outputs at the root with hooks, which
        # are code, not data: the recorded attribute says to put them back.
        from slimkit.quantize._float import install_io_cast

        install_io_cast(model, _dtype(io_dtype))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise SerializationError(f"unknown tensor dtype {name!r} in the saved structure.")
    return dtype


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
    _load_state(model, load_sparse_state(weights_path), weights_path)
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
