"""Locate, fetch and load the original Fashion-MNIST IDX files."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from slimkit._io import atomic_path
from slimkit.data._idx import read_idx
from slimkit.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SIZES = {"train": 60_000, "test": 10_000}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Per-pixel statistics of the training set, used to normalize inputs.
MEAN, STD = 0.2860, 0.3530


def cache_dir() -> Path:
    """The user cache folder for downloaded data (``$XDG_CACHE_HOME/slimkit/fashion-mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimkit" / "fashion-mnist"


def candidate_dirs(root: str | Path | None = None) -> list[Path]:
    """Folders searched, in order: ``root``, ``$SLIMKIT_DATA``, Debian's folder, the cache."""
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root))
    env = os.environ.get("SLIMKIT_DATA")
    if env:
        dirs += [Path(env) / "fashion-mnist", Path(env)]
    dirs += [DEBIAN_DIR, cache_dir()]
    return dirs


def locate_fashion_mnist(root: str | Path | None = None, download: bool = True) -> Path:
    """Return the folder that holds the four Fashion-MNIST files, downloading them if allowed.

    Raises:
        DataError: the files are nowhere and could not be downloaded; the message lists where
            slimkit looked and how to install the data.
    """
    searched = candidate_dirs(root)
    for folder in searched:
        if _has_files(folder):
            return folder
    if download:
        try:
            return _download(cache_dir())
        except (OSError, urllib.error.URLError) as exc:
            reason = f"downloading from {OFFICIAL_URL} failed ({exc})"
    else:
        reason = "downloading was not allowed"
    looked = "\n".join(f"  - {d}" for d in searched)
    raise DataError(
        f"Fashion-MNIST not found, and {reason}. Looked in:\n{looked}\n"
        "Install it with one of:\n"
        "  - sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu)\n"
        "  - put the four *-ubyte.gz files in a folder and set SLIMKIT_DATA to it"
    )


def _has_files(folder: Path) -> bool:
    names = [n for pair in FILES.values() for n in pair]
    return all((folder / n).is_file() or (folder / n.removesuffix(".gz")).is_file() for n in names)


def _download(folder: Path) -> Path:
    for name in (n for pair in FILES.values() for n in pair):
        target = folder / name
        if target.is_file():
            continue
        with (
            urllib.request.urlopen(OFFICIAL_URL + name, timeout=30) as resp,
            atomic_path(target) as tmp,
        ):
            tmp.write_bytes(resp.read())
    return folder


def _path(folder: Path, name: str) -> Path:
    gz = folder / name
    return gz if gz.is_file() else folder / name.removesuffix(".gz")


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.

    Example:
        >>> images, labels = load_fashion_mnist("test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        (torch.Size([10000, 28, 28]), torch.Size([10000]))
    """
    if split not in FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'.")
    folder = locate_fashion_mnist(root, download=download)
    image_file, label_file = (_path(folder, n) for n in FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    _check(split, image_file, images, label_file, labels)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _check(
    split: str, image_file: Path, images: np.ndarray, label_file: Path, labels: np.ndarray
) -> None:
    n = SIZES[split]
    if images.shape != (n, 28, 28):
        raise DataError(f"{image_file}: expected {n} images of 28x28, found shape {images.shape}.")
    if labels.shape != (n,) or labels.max(initial=0) >= len(CLASSES):
        raise DataError(f"{label_file}: expected {n} labels in 0..9, found shape {labels.shape}.")
