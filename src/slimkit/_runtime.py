"""Process-wide settings: thread counts, seeds and progress display."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)
_progress_enabled = os.environ.get("SLIMKIT_PROGRESS", "1") != "0"


def set_progress(enabled: bool) -> None:
    """Show or hide progress bars and per-epoch lines (also ``SLIMKIT_PROGRESS=0``)."""
    global _progress_enabled
    _progress_enabled = enabled


def progress_enabled() -> bool:
    return _progress_enabled


def log(message: str) -> None:
    """Print one progress line to stderr, unless progress display is off."""
    if _progress_enabled:
        console.print(message, highlight=False)


def progress() -> Progress:
    """A rich progress display (disabled when progress is off)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
        console=console, disable=not _progress_enabled, transient=True,
    )  # fmt: skip


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (``None``: leave as is), then restore."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
