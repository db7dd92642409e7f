"""Atomic training checkpoints, read back without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slimkit._io import atomic_path
from slimkit.errors import SerializationError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``folder`` atomically."""
    path = Path(folder) / CHECKPOINT_NAME
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The checkpoint in ``folder``, or ``None`` when there is none."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot read checkpoint {path}: {exc}. Delete it to start training from scratch."
        ) from exc
