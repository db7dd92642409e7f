"""slimkit.env: what a report records about the machine and the software."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimkit import env
from slimkit.env import INFERENCE_CPU_FLAGS, OPTIONAL_PACKAGES, collect_env


def test_collect_env_keys_and_values() -> None:
    info = collect_env()
    assert set(info) == {
        "slimkit", "python", "torch", "numpy", "packages", "os", "cpu",
        "torch_threads", "torch_interop_threads", "torch_parallel", "torch_backends",
    }  # fmt: skip
    assert info["torch"] == torch.__version__
    assert info["slimkit"] == importlib.metadata.version("slimkit")
    assert set(info["packages"]) == set(OPTIONAL_PACKAGES)
    for name, version in info["packages"].items():
        assert version is None or version == importlib.metadata.version(name)
    assert set(info["cpu"]) == {"model", "logical_cores", "flags"}
    assert list(info["cpu"]["flags"]) == list(INFERENCE_CPU_FLAGS)
    assert all(isinstance(v, bool) for v in info["cpu"]["flags"].values())
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["torch_parallel"].startswith("ATen parallel backend")
    json.dumps(info)  # JSON-ready as is


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_tile\n"
    )
    monkeypatch.setattr(env, "_CPUINFO", cpuinfo)
    cpu = collect_env()["cpu"]
    assert cpu["model"] == "Test CPU 9000"
    assert cpu["flags"] == {
        "avx2": True, "avx512f": True, "avx512_vnni": False, "avx512_bf16": False, "amx": True,
    }  # fmt: skip


def test_optional_packages_are_not_imported() -> None:
    code = (
        "import sys, slimkit.env; slimkit.env.collect_env(); "
        f"print([m for m in {list(OPTIONAL_PACKAGES)!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
