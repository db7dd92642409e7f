"""The TVM runner: Relax import, static batch libraries, host target, tuning cache reuse."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit import env
from slimkit.data import DataSplits
from slimkit.errors import ConfigError, MissingDependencyError
from slimkit.measure import get_runner
from slimkit.models import create_model

pytest.importorskip("tvm")

from slimkit.compile._tvm import (
    TvmConfig,
    TvmRunner,
    build_runner,
    host_target,
    tuning_dir,
)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fmnist_tiny").eval()


@pytest.fixture(scope="module")
def untuned(tiny: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TvmRunner]:
    cache = tmp_path_factory.mktemp("tvm-cache")
    config = TvmConfig(batch_sizes=(1, 4), cache_dir=cache)
    runner = build_runner(tiny, torch.randn(1, 1, 28, 28), None, config)  # batch 1: dynamic too
    yield runner
    runner.close()


def test_registered_under_its_name() -> None:
    assert get_runner("tvm") is TvmRunner


def test_host_target_is_llvm_for_this_cpu() -> None:
    target = host_target(threads=2)
    assert target["kind"] == "llvm" and target["num-cores"] == 2
    assert target["mcpu"] and target["mcpu"] != "generic"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512f" not in flags:  # masked features are switched off, never used
        assert all(not f.startswith("+avx512") for f in target.get("mattr", []))


def test_only_the_features_the_kernel_lacks_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel writes avx512_vnni and amx_tile where LLVM writes avx512vnni and amx-tile: a
    # CPU that has VNNI must keep it (masking it once cost the int8 kernels their VNNI path).
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n")
    monkeypatch.setattr(env, "_CPUINFO", cpuinfo)
    masked = {f.removeprefix("-") for f in host_target().get("mattr", [])}
    assert not masked & {"avx512f", "avx512vnni", "amx-tile"}
    implied = {"avx512bf16", "avx512vbmi2", "amx-int8", "avxvnni"}  # when the CPU name implies them
    assert all(f in masked for f in implied if f in _implied_features())


def _implied_features() -> set[str]:
    import tvm

    mcpu = host_target()["mcpu"]
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    return set(tvm.target.codegen.llvm_get_cpu_features(target))


def test_untuned_libraries_equal_pytorch_at_every_batch(
    untuned: TvmRunner, tiny: nn.Module, fmnist_small: DataSplits
) -> None:
    assert sorted(untuned.libraries) == [1, 4] and untuned.tuning == {}
    with torch.inference_mode():
        for batch in (1, 4, 3):  # 3 is compiled on its first call
            x = fmnist_small.test_inputs[:batch]
            assert float((untuned(x) - tiny(x)).abs().max()) <= 1e-4
    assert 3 in untuned.libraries


def test_artifact_size_and_child_spec(untuned: TvmRunner) -> None:
    assert untuned.artifact_size_bytes() == untuned.libraries[1].stat().st_size > 0
    spec = untuned.child_spec()
    assert spec.payload["threads"] == 1 and set(spec.payload["libraries"]) >= {1, 4}
    rebuilt = spec.build()
    assert isinstance(rebuilt, TvmRunner)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x), untuned(x), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="compiled for batch sizes"):
        rebuilt(torch.randn(2, 1, 28, 28))  # a rebuilt runner has no model to compile from
    rebuilt.close()
    with pytest.raises(ConfigError, match="closed"):
        rebuilt(x)


def test_records_are_keyed_by_machine_and_structure_not_weights(
    tiny: nn.Module, tmp_path: Path
) -> None:
    config = TvmConfig(cache_dir=tmp_path)
    x = torch.randn(1, 1, 28, 28)
    here = tuning_dir(tiny, x, config)
    assert here.parent.parent == tmp_path / "tvm"
    assert here.parent.name == f"{host_target()['mcpu']}-1t"
    retrained = create_model("fmnist_tiny")  # other weights, same structure
    assert tuning_dir(retrained, x, config) == here
    wider = create_model("fmnist_tiny", widths=(8, 16, 32))
    assert tuning_dir(wider, x, config) != here


def test_config_checks() -> None:
    assert not TvmConfig().tunes and TvmConfig(max_trials=8).tunes
    with pytest.raises(ConfigError, match="kind"):
        TvmConfig.parse({"target": {"kind": "cuda"}})
    with pytest.raises(ConfigError, match="batch_sizes"):
        TvmConfig.parse({"batch_sizes": [0]})


@pytest.mark.slow  # a tuning round of one kernel: 1-3 minutes on 2 busy cores
def test_a_second_compile_reuses_the_records_without_tuning(
    tiny: nn.Module, tmp_path: Path, fmnist_small: DataSplits
) -> None:
    x = fmnist_small.test_inputs[:1]
    # A time budget of 1 s: the heaviest kernel gets one round of 4 candidates, then the
    # budget stops the tuning (the other kernels keep their untuned code).
    config = TvmConfig(tune_seconds=1, trials_per_round=4, cache_dir=tmp_path)
    first = build_runner(tiny, x, None, config)
    summary = first.tuning[1]
    assert summary.stopped_by == "time" and 1 <= summary.trials <= 4 < summary.tasks
    records = Path(summary.directory)
    assert records == tuning_dir(tiny, x, config)
    lines = (records / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) == summary.trials  # the measured candidates are in the database
    assert len({json.loads(line)[0] for line in lines}) == 1  # all of one kernel
    saved = json.loads((records / "slimkit-tuning.json").read_text())
    assert saved["1"]["trials"] == summary.trials
    with torch.inference_mode():
        assert float((first(x) - tiny(x)).abs().max()) <= 1e-4
    first.close()

    again = build_runner(tiny, x, None, config)
    assert again.tuning[1].stopped_by == "cached"
    assert again.tuning[1].trials == summary.trials
    assert (records / "database_tuning_record.json").read_text().splitlines() == lines
    with torch.inference_mode():
        assert float((again(x) - tiny(x)).abs().max()) <= 1e-4
    again.close()


def test_a_missing_tvm_is_one_line_with_the_install_command(
    tiny: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tvm", None)  # import tvm now fails
    with pytest.raises(MissingDependencyError, match=r"slimkit\[tvm\]") as info:
        build_runner(tiny, torch.zeros(1, 1, 28, 28), None)
    assert "\n" not in str(info.value)


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def test_an_operator_the_frontend_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot import the model.*special_bessel_j0"):
        build_runner(_Bessel(), torch.randn(2, 8), None, {"cache_dir": tmp_path})
