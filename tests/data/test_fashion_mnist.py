from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.data import (
    DataConfig,
    TensorLoader,
    load_dataset,
    load_fashion_mnist,
    locate_fashion_mnist,
    read_idx,
)
from slimkit.data._fashion_mnist import FILES
from slimkit.errors import ConfigError, DataError


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_real_files_have_the_documented_shapes_and_labels() -> None:
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    assert train_x.shape == (60_000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10_000, 28, 28)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert torch.bincount(train_y).tolist() == [6000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10


def test_read_idx_round_trips_raw_and_gzip(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    _write_idx(tmp_path / "a.raw", array, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.raw"), array)


def test_truncated_file_gives_a_clear_error(tmp_path: Path) -> None:
    source = Path(locate_fashion_mnist()) / FILES["test"][1]
    raw = gzip.decompress(source.read_bytes())
    broken = tmp_path / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"corrupt.*declares shape"):
        read_idx(broken)


def test_not_idx_and_not_gzip_errors(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_corrupt_copy_in_root_is_reported_not_silently_skipped(tmp_path: Path) -> None:
    source = Path(locate_fashion_mnist())
    for pair in FILES.values():
        for name in pair:
            shutil.copy(source / name, tmp_path / name)
    images = tmp_path / FILES["test"][0]
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000]))
    with pytest.raises(DataError, match="corrupt"):
        load_fashion_mnist("test", root=tmp_path)


def test_missing_data_lists_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMKIT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr("slimkit.data._fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        locate_fashion_mnist(download=False)
    message = str(info.value)
    assert (
        str(tmp_path / "nowhere") in message and "apt-get install dataset-fashion-mnist" in message
    )


def test_slimkit_data_env_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = Path(locate_fashion_mnist())
    for pair in FILES.values():
        for name in pair:
            (tmp_path / name).symlink_to(source / name)
    monkeypatch.setenv("SLIMKIT_DATA", str(tmp_path))
    assert locate_fashion_mnist(download=False) == tmp_path


def test_dataset_is_normalized_and_subsets_are_reproducible() -> None:
    a = load_dataset(DataConfig(train_subset=300, test_subset=100, seed=1))
    b = load_dataset(DataConfig(train_subset=300, test_subset=100, seed=1))
    assert a.train_inputs.shape == (300, 1, 28, 28) and a.test_inputs.shape == (100, 1, 28, 28)
    assert torch.equal(a.train_labels, b.train_labels)
    full = load_dataset("fashion-mnist")
    assert (
        abs(full.train_inputs.mean().item()) < 0.01
        and abs(full.train_inputs.std().item() - 1) < 0.01
    )


def test_unknown_dataset_names_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist"):
        load_dataset("cifar-1000")


def test_loader_covers_every_sample_once_per_epoch_and_reshuffles() -> None:
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    loader = TensorLoader(x, torch.arange(10), 4, shuffle=True, seed=3)
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)


def test_augmentation_keeps_shape_and_pixel_content() -> None:
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    loader = TensorLoader(x, torch.zeros(8, dtype=torch.long), 8, augment=True, seed=0)
    ((batch, _),) = list(loader)
    assert batch.shape == x.shape
    # A shift of at most 2 pixels keeps the whole 8x8 square inside the image.
    assert torch.all(batch.sum(dim=(1, 2, 3)) == 64)
