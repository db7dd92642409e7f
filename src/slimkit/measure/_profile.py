"""``profile`` and ``compare``: every measurement of a model (or two) in one call."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from slimkit._runtime import log, num_threads
from slimkit.config import Config
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.measure._accuracy import accuracies
from slimkit.measure._counts import MacCount, count_macs
from slimkit.measure._energy import EnergyReading, open_rapl
from slimkit.measure._latency import Timing, time_interleaved
from slimkit.measure._memory import MemoryReading, measure_peak_ram
from slimkit.measure._report import Comparison, ProfileReport
from slimkit.measure._runner import Runner, as_runner
from slimkit.models import ModelSpec, model_info

__all__ = ["ProfileConfig", "compare", "profile"]

COMPARE_ROUNDS = 10
"""Blocks per runner in :func:`compare`; each round times both runners."""

Data = Iterable[tuple[Tensor, Tensor]] | DataSplits


class ProfileConfig(Config):
    """How to measure: threads, batch sizes, timing budget and optional measurements.

    Example:
        >>> ProfileConfig(threads=2, max_seconds=0.5).min_runs
        20
    """

    threads: Annotated[int, Field(ge=1)] = 1
    latency_batch: Annotated[int, Field(ge=1)] = 1
    throughput_batch: Annotated[int, Field(ge=1)] = 64
    warmup: Annotated[int, Field(ge=0)] = 10
    min_runs: Annotated[int, Field(ge=1)] = 20
    max_seconds: Annotated[float, Field(ge=0)] = 2.0
    memory: bool = True
    energy: bool = True
    accuracy_batch: Annotated[int, Field(ge=1)] = 512


def profile(
    model_or_runner: nn.Module | Runner,
    example_inputs: Tensor | None = None,
    *,
    config: ProfileConfig | None = None,
    data: Data | None = None,
) -> ProfileReport:
    """Measure a model or runner: counts, size, latency, throughput, peak RAM, energy, accuracy.

    Args:
        model_or_runner: An ``nn.Module`` (run eagerly) or any :class:`Runner`.
        example_inputs: One batch of inputs, of any batch size; the latency and throughput
            batches are built from it by repeating or slicing along dim 0. When ``None``, a
            model built by :func:`slimkit.models.create_model` gets zeros of its input shape.
        config: How to measure (default: :class:`ProfileConfig()`).
        data: Labelled ``(inputs, labels)`` batches (or a ``DataSplits``, whose test split is
            used) for top-1 accuracy.

    Raises:
        ConfigError: The inputs are missing, or the model rejects them (raised before any timing).

    Example:
        >>> from slimkit.models import create_model
        >>> cfg = ProfileConfig(max_seconds=0.05, min_runs=3, warmup=1, memory=False)
        >>> report = profile(create_model("fmnist_tiny"), config=cfg)
        >>> report.params, report.macs
        (24058, 1919872)
    """
    [report] = _measure(
        [model_or_runner], example_inputs, config or ProfileConfig(), data, rounds=1
    )
    return report


def compare(
    baseline: nn.Module | Runner,
    candidate: nn.Module | Runner,
    example_inputs: Tensor | None = None,
    *,
    config: ProfileConfig | None = None,
    data: Data | None = None,
) -> Comparison:
    """Profile two models on the same inputs, with their timings interleaved.

    Each timing alternates short blocks of the two runners (A B, B A, ... for
    ``COMPARE_ROUNDS`` rounds), so that load from other processes hits both alike; percentiles
    are taken over all blocks. Arguments are as for :func:`profile`.

    Example:
        >>> from slimkit.models import create_model
        >>> cfg = ProfileConfig(max_seconds=0.05, min_runs=3, warmup=1, memory=False)
        >>> result = compare(create_model("fmnist_cnn"), create_model("fmnist_tiny"), config=cfg)
        >>> round(result.params_ratio, 4)
        0.0073
    """
    config = config or ProfileConfig()
    base, cand = _measure(
        [baseline, candidate], example_inputs, config, data, rounds=COMPARE_ROUNDS
    )
    return Comparison(base, cand)


def _measure(
    models: Sequence[nn.Module | Runner],
    example_inputs: Tensor | None,
    config: ProfileConfig,
    data: Data | None,
    rounds: int,
) -> list[ProfileReport]:
    runners = [as_runner(m) for m in models]
    try:
        example = _example_inputs(runners, example_inputs)
        with num_threads(config.threads):
            for runner in runners:
                _check_forward(runner, example)
            macs = [_macs(r, example) for r in runners]
            accs = _accuracies(runners, data, config)
            latency, throughput, energy = _timings(runners, example, config, rounds)
        memory = [_peak_ram(r, example, config) for r in runners]
        return [
            _report(r, config, m, lat, thr, e, mem, acc)
            for r, m, lat, thr, e, mem, acc in zip(
                runners, macs, latency, throughput, energy, memory, accs, strict=True
            )
        ]
    finally:
        # Reverse order: two runners around one module restore its original mode last.
        for runner, model in reversed(list(zip(runners, models, strict=True))):
            if runner is not model:
                runner.close()


def _example_inputs(runners: Sequence[Runner], example_inputs: Tensor | None) -> Tensor:
    if example_inputs is None:
        spec = next((s for s in map(_spec_of, runners) if s is not None), None)
        if spec is None:
            raise ConfigError(
                "profile needs example_inputs (one batch of the model's inputs): the model was not "
                "built by slimkit.models.create_model, so its input shape is unknown."
            )
        return torch.zeros(1, *model_info(spec.name).input_shape)
    if (
        not isinstance(example_inputs, Tensor)
        or example_inputs.dim() == 0
        or not len(example_inputs)
    ):
        raise ConfigError(
            "example_inputs must be a tensor holding a batch of at least one sample along dim 0, "
            f"got {type(example_inputs).__name__} {tuple(getattr(example_inputs, 'shape', ()))}."
        )
    return example_inputs


def _spec_of(runner: Runner) -> ModelSpec | None:
    spec = getattr(runner.torch_module(), "slimkit_spec", None)
    return spec if isinstance(spec, ModelSpec) else None


def _check_forward(runner: Runner, example: Tensor) -> None:
    sample = example[:1]
    try:
        runner(sample)
    except ConfigError:
        raise
    except Exception as exc:
        expected = "pass example_inputs shaped like one batch of the model's real inputs"
        spec = _spec_of(runner)
        if spec is not None:
            shape = ", ".join(map(str, model_info(spec.name).input_shape))
            expected = f"{spec.name} expects inputs of shape (batch, {shape})"
        raise ConfigError(
            f"the {runner.name} runner failed on inputs of shape {tuple(sample.shape)}: "
            f"{type(exc).__name__}: {exc}\n{expected}."
        ) from exc


def _macs(runner: Runner, example: Tensor) -> MacCount:
    module = runner.torch_module()
    if module is None:
        return MacCount(None, f"the {runner.name} runner has no torch module to count MACs on")
    return count_macs(module, example)


def _accuracies(
    runners: Sequence[Runner], data: Data | None, config: ProfileConfig
) -> list[float | None]:
    if data is None:
        return [None] * len(runners)
    log(f"accuracy of {', '.join(r.name for r in runners)}")
    batches = data.test_loader(config.accuracy_batch) if isinstance(data, DataSplits) else data
    return list(accuracies(runners, batches, max_batch=config.accuracy_batch))


def _timings(
    runners: Sequence[Runner], example: Tensor, config: ProfileConfig, rounds: int
) -> tuple[list[Timing], list[Timing], list[EnergyReading]]:
    common = {
        "warmup": config.warmup,
        "min_runs": config.min_runs,
        "max_seconds": config.max_seconds,
    }
    log(f"latency at batch {config.latency_batch}, {config.threads} thread(s)")
    latency = time_interleaved(
        runners, _batch(example, config.latency_batch), rounds=rounds, **common
    )
    meter, reason = open_rapl() if config.energy else (None, "not measured (energy=False)")
    log(f"throughput at batch {config.throughput_batch}")
    big = _batch(example, config.throughput_batch)
    throughput = time_interleaved(runners, big, rounds=rounds, meter=meter, **common)
    return latency, throughput, [_energy(t, reason) for t in throughput]


def _energy(timing: Timing, reason: str | None) -> EnergyReading:
    if reason is not None:
        return EnergyReading.unavailable(reason)
    per_sample = timing.joules_per_sample
    if not per_sample or per_sample <= 0:
        return EnergyReading.unavailable("the RAPL counter did not advance during the runs")
    return EnergyReading(True, per_sample, None)


def _peak_ram(runner: Runner, example: Tensor, config: ProfileConfig) -> MemoryReading | None:
    if not config.memory:
        return None
    log(f"peak RAM of {runner.name} in a child process")
    return measure_peak_ram(
        runner, _batch(example, config.throughput_batch), threads=config.threads
    )


def _batch(example: Tensor, size: int) -> Tensor:
    """``size`` samples from ``example``: its first ones, repeated along dim 0 when too few."""
    reps = math.ceil(size / len(example))
    return example.repeat(reps, *[1] * (example.dim() - 1))[:size].contiguous()


def _report(
    runner: Runner,
    config: ProfileConfig,
    macs: MacCount,
    latency: Timing,
    throughput: Timing,
    energy: EnergyReading,
    memory: MemoryReading | None,
    accuracy: float | None,
) -> ProfileReport:
    params, nonzero = runner.parameter_counts()
    return ProfileReport(
        runner=runner.name,
        threads=config.threads,
        params=params,
        params_nonzero=nonzero,
        macs=macs.macs,
        macs_note=macs.note,
        size_bytes=runner.artifact_size_bytes(),
        peak_ram_bytes=memory.peak_ram_bytes if memory else None,
        peak_rss_bytes=memory.peak_rss_bytes if memory else None,
        latency=latency.stats,
        latency_batch=config.latency_batch,
        throughput=throughput.samples_per_second,
        throughput_batch=config.throughput_batch,
        accuracy=accuracy,
        energy=energy,
    )
