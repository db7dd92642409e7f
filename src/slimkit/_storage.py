"""Sparse weights on disk: a bitmask and the non-zero values of each sparse tensor, in safetensors.

A pruned model's zeros cost nothing in this format: a tensor that is smaller stored sparse is
written as one bit per element (which are non-zero) plus its non-zero values; every other tensor
is written as is. Nothing is pickled, and reading it back gives the same tensors exactly (unless
``values_dtype`` asked for rounded values).

Layout (one safetensors file)::

    metadata   format = "slimkit-sparse", version = "1"
               sparse = JSON {name: {"shape": [...], "dtype": "float32"}}   tensors stored sparse
               aliases = JSON {name: name stored}                           tied tensors, once
    tensors    NAME            a dense tensor, as is
               NAME::mask      uint8: the non-zero positions, row-major, packed 8 per byte
                               (little bit order, NumPy's ``packbits(bitorder="little")``)
               NAME::values    the non-zero values, row-major (original dtype or values_dtype)

A plain safetensors file (no ``format`` in its metadata) reads as all-dense, so
:func:`load_sparse_state` reads slimkit's dense weight files too.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> layer = torch.nn.Linear(64, 64)
    >>> with torch.no_grad():
    ...     layer.weight[layer.weight.abs() < 0.1] = 0.0
    >>> path = save_sparse(layer, Path(tempfile.mkdtemp()) / "layer.safetensors")
    >>> again = load_sparse(path, torch.nn.Linear(64, 64))
    >>> torch.equal(again.weight, layer.weight)
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from slimkit._io import atomic_path
from slimkit.errors import SerializationError

__all__ = ["SPARSE_FORMAT", "load_sparse", "load_sparse_state", "save_sparse", "sparse_pays"]

SPARSE_FORMAT = "slimkit-sparse"
_VERSION = "1"
_MASK, _VALUES = "::mask", "::values"
# Each stored tensor costs a header entry (name, dtype, shape, offsets) of about this many bytes
# plus its name: a sparse tensor must save more than its second entry costs.
_HEADER_ENTRY = 64


def save_sparse(
    model_or_state: nn.Module | Mapping[str, Tensor],
    path: str | Path,
    *,
    values_dtype: torch.dtype | None = None,
) -> Path:
    """Write a model's state (or a state dict) to ``path``, sparse tensors as mask + values.

    A floating-point tensor is stored sparse when that is smaller than dense (for float32:
    below about 97 % non-zero); the others are stored as is. The write is atomic.

    Args:
        model_or_state: A module (its ``state_dict()``) or a state dict.
        path: The file to write.
        values_dtype: Store the sparse tensors' values in this dtype (``torch.float16`` or
            ``torch.bfloat16``) to halve them; they are rounded, so reloading is no longer exact.
            ``None`` (the default) keeps every value exactly.

    Returns:
        ``path``.
    """
    if values_dtype not in (None, torch.float16, torch.bfloat16):
        raise ValueError(
            f"values_dtype must be None, torch.float16 or torch.bfloat16, got {values_dtype}"
        )
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors, sparse, aliases = _encode(state, values_dtype)
    metadata = {
        "format": SPARSE_FORMAT,
        "version": _VERSION,
        "sparse": json.dumps(sparse, separators=(",", ":")),
        "aliases": json.dumps(aliases, separators=(",", ":")),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def sparse_pays(state: Mapping[str, Tensor], min_saving: float = 0.05) -> bool:
    """Whether storing ``state`` sparse makes its file at least ``min_saving`` smaller.

    The margin keeps ordinary dense models (a few all-zero buffers, such as fresh BatchNorm
    means) in plain safetensors files that any tool reads.

    Example:
        >>> sparse_pays({"w": torch.zeros(64, 64)}), sparse_pays({"w": torch.ones(64, 64)})
        (True, False)
    """
    dense = saved = 0
    for name, tensor in state.items():
        tensor = tensor.detach()
        size = tensor.numel() * tensor.element_size()
        dense += size
        if _pays_sparse(name, tensor):
            saved += size - _sparse_bytes(name, tensor)
    return dense > 0 and saved >= min_saving * dense


def load_sparse_state(path: str | Path) -> dict[str, Tensor]:
    """Read a file written by :func:`save_sparse` (or a plain safetensors file) as a state dict.

    Raises:
        SerializationError: the file is missing, of another version, or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"{path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != SPARSE_FORMAT:
        return raw  # a plain, dense safetensors file
    if meta.get("version") != _VERSION:
        raise SerializationError(
            f"{path} is {SPARSE_FORMAT} version {meta.get('version')!r}; this slimkit reads "
            f"version {_VERSION}."
        )
    return _decode(raw, json.loads(meta["sparse"]), json.loads(meta.get("aliases", "{}")), path)


def load_sparse(path: str | Path, model: nn.Module) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (a module of the same structure) and return it.

    Raises:
        SerializationError: the file does not hold exactly the model's tensors, in its shapes.
    """
    state = load_sparse_state(path)
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        detail = (
            f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file and "
            f"{tuple(expected[wrong[0]].shape)} in the model"
            if wrong
            else f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
        raise SerializationError(f"{path} does not match the model's structure: {detail}.")
    model.load_state_dict(state, strict=True)
    return model


def _encode(
    state: Mapping[str, Tensor], values_dtype: torch.dtype | None
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, str]]:
    tensors: dict[str, Tensor] = {}
    sparse: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    stored: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        if name.endswith((_MASK, _VALUES)):
            raise SerializationError(f"tensor name {name!r} ends with a suffix this format uses.")
        tensor = tensor.detach().cpu()
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if key in stored and tensor.numel():  # a tied weight: store it once
            aliases[name] = stored[key]
            continue
        stored[key] = name
        if _pays_sparse(name, tensor):
            keep = (tensor != 0).reshape(-1)
            bits = np.packbits(keep.numpy(), bitorder="little")
            values = tensor.reshape(-1)[keep]
            tensors[name + _MASK] = torch.from_numpy(bits)
            tensors[name + _VALUES] = values.to(values_dtype or values.dtype).contiguous()
            sparse[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
        else:
            # safetensors refuses tensors sharing memory (views of one buffer): copy those.
            shares = tensor.numel() and tensor.untyped_storage().data_ptr() in storages
            tensors[name] = tensor.clone() if shares else tensor.contiguous()
        if tensor.numel():
            storages.add(tensor.untyped_storage().data_ptr())
    return tensors, sparse, aliases


def _pays_sparse(name: str, tensor: Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    return _sparse_bytes(name, tensor) < tensor.numel() * tensor.element_size()


def _sparse_bytes(name: str, tensor: Tensor) -> int:
    nonzero = int(torch.count_nonzero(tensor))
    return (
        math.ceil(tensor.numel() / 8) + nonzero * tensor.element_size() + _HEADER_ENTRY + len(name)
    )


def _decode(
    raw: dict[str, Tensor], sparse: dict[str, Any], aliases: dict[str, str], path: Path
) -> dict[str, Tensor]:
    state = {k: v for k, v in raw.items() if not k.endswith((_MASK, _VALUES))}
    for name, info in sparse.items():
        try:
            bits, values = raw[name + _MASK], raw[name + _VALUES]
            shape, dtype = tuple(info["shape"]), getattr(torch, info["dtype"])
        except (KeyError, AttributeError, TypeError) as exc:
            raise SerializationError(
                f"{path}: the sparse entry of {name!r} is incomplete ({exc})."
            ) from exc
        numel = math.prod(shape)
        if not isinstance(dtype, torch.dtype) or bits.numel() != math.ceil(numel / 8):
            raise SerializationError(
                f"{path}: the mask of {name!r} does not fit its shape {shape}."
            )
        keep = torch.from_numpy(
            np.unpackbits(bits.numpy(), count=numel, bitorder="little").astype(bool)
        )
        if int(keep.sum()) != values.numel():
            raise SerializationError(
                f"{path}: {name!r} has {int(keep.sum())} non-zero positions but "
                f"{values.numel()} values."
            )
        dense = torch.zeros(numel, dtype=dtype)
        dense[keep] = values.to(dtype)
        state[name] = dense.view(shape)
    for name, target in aliases.items():
        if target not in state:
            raise SerializationError(f"{path}: {name!r} is tied to {target!r}, which is missing.")
        state[name] = state[target]
    return state
