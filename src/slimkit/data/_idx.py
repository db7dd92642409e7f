"""Reader of the IDX format that MNIST and Fashion-MNIST ship in (optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from slimkit.errors import DataError

# Third byte of the magic number -> element type; big-endian as the format specifies.
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared shape.

    Raises:
        DataError: the file is truncated, not IDX, or its size disagrees with its header.
    """
    path = Path(path)
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"cannot read {path}: {exc}. Delete the file so it can be fetched again."
        ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    dtype = _DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path} is truncated: its header needs {header} bytes, file has {len(raw)}."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} is corrupt: its header declares shape {shape} ({expected} bytes) but the "
            f"file has {len(raw)} bytes. Delete it and fetch the data again."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _read_bytes(path: Path) -> bytes:
    with path.open("rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()
