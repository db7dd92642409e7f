"""profile() on small real models: statistics, size, accuracy, peak RAM, energy, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from slimkit.config import Config
from slimkit.errors import ConfigError
from slimkit.measure import (
    MeasurementError,
    ProfileConfig,
    TorchEagerRunner,
    as_runner,
    get_runner,
    list_runners,
    measure_peak_ram,
    open_rapl,
    profile,
    register_runner,
)
from slimkit.models import create_model
from slimkit.serialize import save_weights


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def identity_classifier() -> nn.Linear:
    """A 2-class linear layer whose prediction is the index of the larger input."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
        layer.bias.zero_()
    return layer


INPUTS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])


def test_statistics_are_ordered_and_runs_reach_the_minimum(fast: ProfileConfig) -> None:
    report = profile(small_cnn(), torch.randn(1, 1, 8, 8), config=fast)
    lat = report.latency
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms
    assert lat.mean_ms > 0
    assert lat.runs >= fast.min_runs
    assert report.throughput > 0
    assert (report.latency_batch, report.throughput_batch) == (1, 64)
    assert (report.runner, report.threads) == ("torch-eager", 1)
    assert report.params == report.params_nonzero == 4 * 9 + 4 + 144 * 3 + 3
    assert report.macs == 4 * 9 * 36 + 144 * 3
    assert report.peak_ram_bytes is None and report.peak_rss_bytes is None


def test_size_is_the_safetensors_file_size(fast: ProfileConfig, tmp_path: Path) -> None:
    model = create_model("fmnist_tiny")
    report = profile(model, config=fast)
    assert report.size_bytes == save_weights(model, tmp_path / "w.safetensors").stat().st_size
    assert report.size_bytes > 4 * report.params  # float32 weights plus buffers and header


@pytest.mark.parametrize(("labels", "expected"), [([0, 1, 1, 0], 0.5), ([0, 1, 0, 1], 1.0)])
def test_accuracy_on_a_hand_made_set(
    fast: ProfileConfig, labels: list[int], expected: float
) -> None:
    data = [(INPUTS[:3], torch.tensor(labels[:3])), (INPUTS[3:], torch.tensor(labels[3:]))]
    cfg = fast.model_copy(update={"accuracy_batch": 2})  # also splits the batch of 3
    assert profile(identity_classifier(), INPUTS[:1], config=cfg, data=data).accuracy == expected


def test_accuracy_is_none_without_data(fast: ProfileConfig) -> None:
    assert profile(identity_classifier(), INPUTS, config=fast).accuracy is None


def test_wrong_input_shape_names_the_expected_shape(fast: ProfileConfig) -> None:
    with pytest.raises(ConfigError, match=r"expects inputs of shape \(batch, 1, 28, 28\)"):
        profile(create_model("fmnist_tiny"), torch.zeros(2, 3, 28, 28), config=fast)
    with pytest.raises(ConfigError, match=r"inputs of shape \(1, 5\)"):
        profile(nn.Linear(4, 2), torch.zeros(8, 5), config=fast)


def test_missing_inputs_for_an_unregistered_model(fast: ProfileConfig) -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        profile(nn.Linear(4, 2), config=fast)


def test_batches_are_built_from_the_example(fast: ProfileConfig) -> None:
    cfg = fast.model_copy(update={"latency_batch": 3, "throughput_batch": 5})
    report = profile(small_cnn(), torch.randn(2, 1, 8, 8), config=cfg)
    assert (report.latency_batch, report.throughput_batch) == (3, 5)


def test_training_mode_is_restored(fast: ProfileConfig) -> None:
    model = small_cnn().train()
    profile(model, torch.randn(1, 1, 8, 8), config=fast)
    assert model.training


def test_report_dict_is_json_with_stable_keys(fast: ProfileConfig) -> None:
    report = profile(small_cnn(), torch.randn(1, 1, 8, 8), config=fast)
    data = json.loads(json.dumps(report.to_dict()))
    assert list(data) == [
        "runner", "threads", "params", "params_nonzero", "macs", "macs_note", "size_bytes",
        "peak_ram_bytes", "peak_rss_bytes", "latency", "latency_batch", "throughput",
        "throughput_batch", "accuracy", "energy",
    ]  # fmt: skip
    assert list(data["latency"]) == ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "runs"]
    assert list(data["energy"]) == ["available", "joules_per_sample", "reason"]
    console = Console(record=True, width=120)
    console.print(report.to_table())
    assert "latency p50" in console.export_text()


def test_energy_reading_says_why_when_unavailable(fast: ProfileConfig) -> None:
    report = profile(small_cnn(), torch.randn(1, 1, 8, 8), config=fast)
    energy = report.energy
    if energy.available:
        assert energy.joules_per_sample and energy.joules_per_sample > 0 and energy.reason is None
    else:
        assert energy.joules_per_sample is None and energy.reason
    off = profile(
        small_cnn(), torch.randn(1, 1, 8, 8), config=fast.model_copy(update={"energy": False})
    )
    assert not off.energy.available and "energy=False" in (off.energy.reason or "")


def test_rapl_reason_names_the_folder(tmp_path: Path) -> None:
    meter, reason = open_rapl(tmp_path)
    assert meter is None and reason is not None and str(tmp_path) in reason


def write_zone(folder: Path, energy_uj: int, wrap_uj: int = 1000) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{wrap_uj}\n")


def test_rapl_sums_packages_and_handles_wrap_around(tmp_path: Path) -> None:
    write_zone(tmp_path / "intel-rapl:0", 900)
    write_zone(tmp_path / "intel-rapl:1", 100)
    write_zone(tmp_path / "intel-rapl:0:0", 5)  # a sub-zone inside package 0: not added again
    meter, reason = open_rapl(tmp_path)
    assert meter is not None and reason is None
    before = meter.read()
    write_zone(tmp_path / "intel-rapl:0", 50)  # wrapped: 100 + 50 uJ
    write_zone(tmp_path / "intel-rapl:1", 400)  # 300 uJ
    assert meter.joules_since(before) == pytest.approx(450e-6)


def test_unreadable_rapl_counter_gives_a_reason(tmp_path: Path) -> None:
    (tmp_path / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # a folder cannot be read
    meter, reason = open_rapl(tmp_path)
    assert meter is None and reason is not None and "intel-rapl:0" in reason


def test_peak_ram_grows_with_the_activation_footprint(fast: ProfileConfig) -> None:
    x = torch.zeros(1, 1, 64, 64)
    cfg = fast.model_copy(update={"memory": True, "min_runs": 2, "max_seconds": 0.05})
    # At batch 64 the wide conv's output is 64*64*64*64 floats = 64 MiB; the narrow one's 1 MiB.
    narrow = profile(nn.Conv2d(1, 1, 3, padding=1), x, config=cfg)
    wide = profile(nn.Conv2d(1, 64, 3, padding=1), x, config=cfg)
    assert narrow.peak_ram_bytes is not None and wide.peak_ram_bytes is not None
    assert narrow.peak_ram_bytes > 0
    assert wide.peak_ram_bytes > narrow.peak_ram_bytes + 48 * 2**20
    assert wide.peak_rss_bytes is not None and wide.peak_rss_bytes > wide.peak_ram_bytes


def test_peak_ram_child_failure_is_reported() -> None:
    with pytest.raises(MeasurementError, match="shapes cannot be multiplied"):
        measure_peak_ram(as_runner(nn.Linear(4, 2)), torch.zeros(3, 5))


def test_peak_ram_child_timeout_stops_the_child() -> None:
    with pytest.raises(MeasurementError, match="no result within"):
        measure_peak_ram(as_runner(nn.Linear(4, 2)), torch.zeros(3, 4), timeout=0.01)


def test_unpicklable_runner_is_reported() -> None:
    model = nn.Linear(4, 2)
    model.register_forward_hook(lambda *args: None)  # a lambda cannot be pickled
    with pytest.raises(MeasurementError, match="memory=False"):
        measure_peak_ram(as_runner(model), torch.zeros(3, 4))


def test_runner_registry() -> None:
    assert "torch-eager" in list_runners()
    assert get_runner("torch-eager") is TorchEagerRunner
    with pytest.raises(ConfigError, match="unknown runner"):
        get_runner("no-such-runtime")
    with pytest.raises(ConfigError, match="already taken"):

        @register_runner("torch-eager")
        class Another(TorchEagerRunner):
            pass

    with pytest.raises(ConfigError, match=r"nn\.Module"):
        as_runner("a model")  # type: ignore[arg-type]


def test_a_runner_passed_in_is_left_open(fast: ProfileConfig) -> None:
    model = small_cnn().train()
    runner = TorchEagerRunner(model)
    profile(runner, torch.randn(1, 1, 8, 8), config=fast)
    assert not model.training  # not closed by profile: still in the runner's eval mode
    runner.close()
    assert model.training


@pytest.mark.parametrize("field", ["threads", "min_runs", "throughput_batch"])
def test_config_rejects_non_positive_values(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ProfileConfig.parse({field: 0})
    assert isinstance(ProfileConfig(), Config)
