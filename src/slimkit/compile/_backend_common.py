"""Small pieces shared by the runtime backends (OpenVINO, ExecuTorch, TVM).

Each backend module exposes ``build_runner(model, example_inputs, onnx_path, options)``; the
options arrive as the backend's own :class:`~slimkit.config.Config`, a plain mapping (from a
recipe) or ``None`` (the defaults), and :func:`as_config` turns all three into the config.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from slimkit._optional import require
from slimkit.config import Config
from slimkit.errors import ConfigError, DataError

__all__ = [
    "as_config",
    "cache_root",
    "check_calibration",
    "check_threads",
    "dynamic_batch_example",
    "files_size",
    "onnx_parameter_counts",
    "remove_folder",
]

C = TypeVar("C", bound=Config)

# ONNX initializer element types that hold weights: floats, int8/uint8 quantized weights and the
# int32 biases of quantized convolutions (FLOAT, UINT8, INT8, INT32, FLOAT16, DOUBLE, BFLOAT16).
# int64 initializers are shapes and indices, not weights.
_WEIGHT_TYPES = {1, 2, 3, 6, 10, 11, 16}


def as_config(options: C | Mapping[str, Any] | None, cls: type[C]) -> C:
    """``options`` as a ``cls``: a ``cls`` as is, a mapping validated, ``None`` the defaults.

    Example:
        >>> from slimkit.compile._openvino import OpenVinoConfig
        >>> as_config({"threads": 2}, OpenVinoConfig).threads
        2
    """
    if isinstance(options, cls):
        return options
    if options is None:
        return cls()
    if isinstance(options, Mapping):
        return cls.parse(dict(options))  # type: ignore[return-value]
    raise ConfigError(
        f"options must be a {cls.__name__}, a mapping of its fields or None, "
        f"got {type(options).__name__}."
    )


def dynamic_batch_example(example_inputs: Tensor) -> Tensor:
    """An example of at least 2 samples, for a ``torch.export`` with a dynamic batch.

    ``torch.export`` specializes a dimension of size 1 (it cannot tell it from a broadcast),
    so a batch-1 example would make the batch static; the sample is repeated instead.

    Example:
        >>> dynamic_batch_example(torch.zeros(1, 3)).shape
        torch.Size([2, 3])
    """
    if example_inputs.dim() and example_inputs.shape[0] == 1:
        return torch.cat([example_inputs, example_inputs])
    return example_inputs


def remove_folder(folder: Path | None) -> None:
    """Delete a runner's own scratch folder (``None``: it has none; a second call is harmless)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def check_threads(threads: int) -> int:
    """``threads`` if it is a positive int, else a :class:`ConfigError`."""
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}.")
    return threads


def files_size(paths: Iterable[Path]) -> int:
    """Total size in bytes of the files that exist among ``paths``."""
    return sum(p.stat().st_size for p in paths if p.is_file())


def cache_root() -> Path:
    """slimkit's cache folder: ``$SLIMKIT_CACHE``, else ``$XDG_CACHE_HOME/slimkit``, else
    ``~/.cache/slimkit``."""
    explicit = os.environ.get("SLIMKIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "slimkit"


def onnx_parameter_counts(path: Path) -> tuple[int, int]:
    """Total and non-zero elements of an ONNX file's weight initializers.

    Counts floats, int8/uint8 weights and int32 biases; quantization scales and zero points,
    scalars and int64 shape constants are not parameters.
    """
    onnx = require("onnx", "onnx", "counting the parameters of an ONNX model")
    model = onnx.load(str(path))
    total = nonzero = 0
    for init in model.graph.initializer:
        if init.data_type not in _WEIGHT_TYPES or not init.dims:
            continue
        if init.name.endswith(("_scale", "_zero_point")):
            continue
        values = onnx.numpy_helper.to_array(init)
        if values.size <= 1:
            continue
        total += int(values.size)
        nonzero += int(np.count_nonzero(values))
    return total, nonzero


def check_calibration(calibration: Tensor, per_sample: Sequence[int | None]) -> None:
    """Refuse calibration samples that would make int8 ranges meaningless, before any work.

    ``per_sample`` is the model's input shape without the batch axis (``None``: a dynamic dim).
    """
    if not isinstance(calibration, Tensor) or calibration.dim() == 0 or len(calibration) == 0:
        raise DataError(
            "int8 calibration needs real samples and got none: pass a few hundred inputs "
            "shaped like the example batch."
        )
    got = tuple(calibration.shape[1:])
    if len(got) != len(per_sample) or any(
        want is not None and want != dim for dim, want in zip(got, per_sample, strict=False)
    ):
        shown = tuple("?" if d is None else d for d in per_sample)
        raise DataError(
            f"calibration samples have shape {got}, the model takes {shown} per sample: "
            "calibrate on the data the model runs on."
        )
    if calibration.is_floating_point() and not bool(torch.isfinite(calibration).all()):
        raise DataError(
            f"calibration samples hold {int((~torch.isfinite(calibration)).sum())} NaN or "
            "infinite values; activation ranges would be meaningless. Clean the samples first."
        )
