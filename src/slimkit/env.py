"""The software and hardware a measurement ran on, so that every number can be put in context.

Latency and throughput depend on the CPU's vector units and on thread settings as much as on the
model; every run folder records them next to its report.

Example:
    >>> env = collect_env()
    >>> sorted(env["cpu"]["flags"])
    ['amx', 'avx2', 'avx512_bf16', 'avx512_vnni', 'avx512f']
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["INFERENCE_CPU_FLAGS", "OPTIONAL_PACKAGES", "collect_env"]

OPTIONAL_PACKAGES = ("onnx", "onnxruntime", "openvino", "optuna", "transformers", "torchvision")
"""Integrations whose versions are recorded (``None`` when absent); they are never imported."""

INFERENCE_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")
"""CPU features that decide which fp32, int8 and bf16 kernels a runtime can use."""

_CPUINFO = Path("/proc/cpuinfo")


def collect_env() -> dict[str, Any]:
    """Versions, operating system, CPU and thread settings of this process, as JSON-ready data.

    Returns:
        A mapping with the keys ``slimkit``, ``python``, ``torch``, ``numpy`` (versions),
        ``packages`` (optional integrations: version or ``None``), ``os``, ``cpu`` (``model``,
        ``logical_cores``, ``flags``: a bool per entry of :data:`INFERENCE_CPU_FLAGS`),
        ``torch_threads``, ``torch_interop_threads``, ``torch_parallel`` (the summary line of
        ``torch.__config__.parallel_info()``) and ``torch_backends`` (mkldnn, mkl, openmp).

    Example:
        >>> env = collect_env()
        >>> env["torch"] == torch.__version__ and env["cpu"]["logical_cores"] >= 1
        True
    """
    return {
        "slimkit": _version("slimkit"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "packages": {name: _version(name) for name in OPTIONAL_PACKAGES},
        "os": platform.platform(),
        "cpu": _cpu(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel": _parallel_summary(),
        "torch_backends": {
            "mkldnn": torch.backends.mkldnn.is_available(),
            "mkl": torch.backends.mkl.is_available(),
            "openmp": torch.backends.openmp.is_available(),
        },
    }


def _version(distribution: str) -> str | None:
    # Metadata only: importing onnxruntime or transformers would cost seconds and memory.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> dict[str, Any]:
    model, flags = _read_cpuinfo()
    return {
        "model": model or platform.processor() or platform.machine() or None,
        "logical_cores": os.cpu_count(),
        "flags": {flag: _has_flag(flag, flags) for flag in INFERENCE_CPU_FLAGS},
    }


def _read_cpuinfo() -> tuple[str | None, set[str]]:
    """The first processor's model name and feature flags (empty off Linux)."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, arm64
            flags = set(value.split())
    return model, flags


def _has_flag(flag: str, flags: set[str]) -> bool:
    # The kernel reports AMX as three flags (amx_tile, amx_int8, amx_bf16); any one means present.
    if flag == "amx":
        return any(f.startswith("amx") for f in flags)
    return flag in flags


def _parallel_summary() -> str | None:
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend"):
            return line.strip()
    return None
