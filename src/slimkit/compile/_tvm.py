"""Apache TVM (Relax) behind slimkit's :class:`~slimkit.measure.Runner`, with MetaSchedule tuning.

:func:`build_runner` imports the model from PyTorch (``torch.export``, then TVM's Relax frontend
``from_exported_program``), compiles it with LLVM for this CPU and runs it with the Relax virtual
machine. Each batch size is compiled with static shapes (MetaSchedule tunes static shapes only);
a batch size not compiled ahead is compiled on its first call.

Untuned TVM is slow on CPU: its kernels are plain loop nests. MetaSchedule tuning searches
schedules for every fused kernel, measures them, and keeps the best in a database. It is bounded
by a number of trials and by a time budget, tunes the heaviest kernels first, one kernel and
round at a time (the budget is checked in between, so the kernel in flight finishes first),
and shows its progress. Its records are cached per machine and model
(``<cache>/tvm/<cpu-key>/<model-hash>/``, by default under ``~/.cache/slimkit``): the CPU key
names the LLVM CPU and the thread count, the model hash covers the model's structure (not its
weights) and the TVM version. A second compile of the same model finds its records there and
does not tune again.

Measured facts behind the choices here (apache-tvm 0.27, see shared RUNTIME-NOTES):

- Targets are JSON dicts (``{"kind": "llvm", "mcpu": "znver3"}``); the CLI string form is gone.
- MetaSchedule imports every tensor intrinsic (CUDA, ROCm, Hexagon, ...), which took 1-4 minutes
  on a loaded 2-core machine, in the tuner and again in every build worker; this module loads
  only the CPU's own intrinsics, and builds candidates in the tuning process instead of a fresh
  worker pool per round.
- MetaSchedule segfaulted with apache-tvm-ffi 0.1.15.post2; 0.1.14.post1 works (the ``tvm``
  extra pins it).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from slimkit._io import write_json
from slimkit._optional import require
from slimkit._runtime import log, progress
from slimkit.compile._backend_common import (
    as_config,
    cache_root,
    check_threads,
    dynamic_batch_example,
    remove_folder,
)
from slimkit.config import Config
from slimkit.env import _read_cpuinfo
from slimkit.errors import ConfigError
from slimkit.measure._runner import Runner, RunnerSpec, register_runner

__all__ = [
    "TuningSummary",
    "TvmConfig",
    "TvmRunner",
    "build_runner",
    "host_target",
    "tuning_dir",
]

_SUMMARY_FILE = "slimkit-tuning.json"


class TvmConfig(Config):
    """Options of the TVM backend.

    Attributes:
        threads: Threads of TVM's runtime (and of the tuning measurements, which tune for it).
        target: The LLVM target as a JSON dict (``{"kind": "llvm", "mcpu": "znver3"}``);
            ``None`` detects this CPU (:func:`host_target`).
        batch_sizes: Batch sizes compiled (and tuned) ahead, each with static shapes; ``None``
            is the example's batch. Other batch sizes are compiled on their first call.
        max_trials: MetaSchedule trials per batch size (``None``: no cap when ``tune_seconds``
            is set). With neither, nothing is tuned; the records of an earlier tuning are
            still applied when ``use_records`` is on.
        trials_per_round: Candidates generated, built and measured per kernel and round.
        tune_seconds: Time budget of the tuning of one batch size (0: no time budget).
            Kernels are tuned one at a time, heaviest first, ``trials_per_round`` candidates
            each, round after round; the budget is checked between kernels, so the last one
            may run past it. Kernels the budget did not reach keep their untuned code.
        use_records: Apply the cached tuning records (off: the untuned build).
        cache_dir: Root of the tuning cache (``None``: ``~/.cache/slimkit``, or
            ``$SLIMKIT_CACHE``); records live in ``<cache_dir>/tvm/<cpu-key>/<model-hash>``.
        out_dir: Where the compiled libraries are written (``None``: a temporary folder that
            the runner deletes when closed).

    Example:
        >>> TvmConfig(max_trials=64, tune_seconds=300).trials_per_round
        32
        >>> TvmConfig().tunes, TvmConfig(tune_seconds=60).tunes
        (False, True)
    """

    threads: int = Field(default=1, ge=1)
    target: dict[str, Any] | None = None
    batch_sizes: tuple[int, ...] | None = None
    max_trials: int | None = Field(default=None, ge=0)
    trials_per_round: int = Field(default=32, ge=1)
    tune_seconds: float = Field(default=0.0, ge=0)
    use_records: bool = True
    cache_dir: Path | None = None
    out_dir: Path | None = None

    @property
    def tunes(self) -> bool:
        """Whether this config asks for tuning (a trial or a time budget)."""
        return bool(self.max_trials) or self.tune_seconds > 0

    def trial_cap(self) -> float:
        """The trial budget; infinite when only time bounds the tuning."""
        return float(self.max_trials) if self.max_trials else float("inf")

    def time_cap(self) -> float:
        """The time budget in seconds; infinite when only trials bound the tuning."""
        return self.tune_seconds if self.tune_seconds > 0 else float("inf")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or any(b < 1 for b in value)):
            raise ValueError("batch_sizes must be positive integers (or None)")
        return value

    @field_validator("target")
    @classmethod
    def _llvm(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("kind") != "llvm":
            raise ValueError('the TVM backend compiles for the CPU: target "kind" must be "llvm"')
        return value


@dataclass(frozen=True)
class TuningSummary:
    """What the tuning of one batch size did (or found in the cache).

    Attributes:
        batch: The batch size.
        trials: Candidates measured (cumulated over the tunings recorded in the cache).
        seconds: Tuning time (cumulated).
        tasks: Fused kernels tuned.
        stopped_by: ``trials``, ``time``, or ``cached`` when this compile reused the records.
        directory: The records' folder.
    """

    batch: int
    trials: int
    seconds: float
    tasks: int
    stopped_by: str
    directory: str


def host_target(threads: int = 1) -> dict[str, Any]:
    """The LLVM target of this CPU, as TVM's JSON dict.

    ``mcpu`` is LLVM's name of the host CPU; on Linux, the AVX-512/AMX features that name
    implies but ``/proc/cpuinfo`` lacks (masked by a hypervisor) are switched off with
    ``mattr``, so the code never uses instructions the machine refuses.

    Example:
        >>> host_target()["kind"]  # doctest: +SKIP
        'llvm'
    """
    tvm = _tvm()
    mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
    target: dict[str, Any] = {"kind": "llvm", "mcpu": mcpu, "num-cores": threads}
    flags = {_feature_key(f) for f in _read_cpuinfo()[1]}
    if flags:
        implied = tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(target))
        masked = sorted(f for f in implied if _risky(f) and _feature_key(f) not in flags)
        if masked:
            target["mattr"] = [f"-{f}" for f in masked]
    return target


def tuning_dir(model: nn.Module, example_inputs: Tensor, config: TvmConfig | None = None) -> Path:
    """The folder of ``model``'s tuning records for this machine (see the module docstring)."""
    config = config or TvmConfig()
    compiled = _Imported.from_torch(model, example_inputs)
    target = _target(config)
    return _records_dir(config, target, compiled.model_hash)


@register_runner("tvm")
class TvmRunner(Runner):
    """Runs TVM Relax VM libraries compiled for fixed batch sizes.

    Args:
        libraries: One exported library (``.so``) per batch size.
        threads: Threads of TVM's runtime thread pool.

    Attributes:
        tuning: What the tuning of each batch size did (set by :func:`build_runner`).

    Example:
        >>> runner = TvmRunner({1: "model-b1.so"}, threads=1)  # doctest: +SKIP
        >>> runner(torch.zeros(1, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """

    def __init__(
        self, libraries: Mapping[int, str | os.PathLike[str]], *, threads: int = 1
    ) -> None:
        if not libraries:
            raise ConfigError("TvmRunner needs at least one compiled library.")
        self.libraries = {int(b): Path(p) for b, p in libraries.items()}
        for path in self.libraries.values():
            if not path.is_file():
                raise ConfigError(f"no TVM library at {path}.")
        self.threads = check_threads(threads)
        self._vms: dict[int, Any] = {}
        self._imported: _Imported | None = None
        self._config: TvmConfig | None = None
        self._target: dict[str, Any] | None = None
        self._owned_dir: Path | None = None
        self._module: nn.Module | None = None
        self.tuning: dict[int, TuningSummary] = {}
        self._closed = False
        _set_runtime_threads(self.threads)
        for batch in self.libraries:
            self._vm(batch)

    def _vm(self, batch: int) -> Any:
        vm = self._vms.get(batch)
        if vm is not None:
            return vm
        if batch not in self.libraries:
            if self._imported is None or self._config is None or self._target is None:
                raise ConfigError(
                    f"this TVM runner was compiled for batch sizes {sorted(self.libraries)}, "
                    f"not {batch}; compile it with batch_sizes including {batch}."
                )
            log(f"tvm: compiling batch {batch} on first use (not in batch_sizes)")
            folder = self._owned_dir or Path(self._config.out_dir or tempfile.mkdtemp())
            self.libraries[batch] = _compile(
                self._imported, batch, self._config, self._target, folder, tune=False
            )[0]
        tvm = _tvm()
        relax = importlib.import_module("tvm.relax")
        try:
            lib = tvm.runtime.load_module(str(self.libraries[batch]))
            vm = relax.VirtualMachine(lib, tvm.cpu())
        except Exception as exc:
            raise ConfigError(
                f"TVM cannot load {self.libraries[batch]}: {_first_line(exc)}"
            ) from exc
        self._vms[batch] = vm
        return vm

    def __call__(self, inputs: Tensor) -> Tensor:
        if self._closed:
            raise ConfigError("this TVM runner was closed; open a new one.")
        tvm = _tvm()
        _set_runtime_threads(self.threads)
        vm = self._vm(int(inputs.shape[0]))
        array = np.ascontiguousarray(inputs.detach().cpu().numpy())
        out = vm["main"](tvm.runtime.tensor(array, tvm.cpu()))
        first = out[0] if not hasattr(out, "numpy") else out
        return torch.from_numpy(first.numpy())

    def artifact_size_bytes(self) -> int:
        """Size of the library of the first batch size (each holds the weights and the code)."""
        first = next(iter(self.libraries.values()))
        return first.stat().st_size

    def torch_module(self) -> nn.Module | None:
        return self._module

    def child_spec(self) -> RunnerSpec:
        payload = {
            "libraries": {b: str(p.resolve()) for b, p in self.libraries.items()},
            "threads": self.threads,
        }
        return RunnerSpec(runner=self.name, module=__name__, payload=payload)

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> TvmRunner:
        payload: dict[str, Any] = dict(spec.payload)
        return cls(payload.pop("libraries"), **payload)

    def close(self) -> None:
        self._vms.clear()
        self._closed = True
        remove_folder(self._owned_dir)
        self._owned_dir = None

    def __repr__(self) -> str:
        return f"TvmRunner(batches={sorted(self.libraries)}, threads={self.threads})"


def build_runner(
    model: nn.Module,
    example_inputs: Tensor,
    onnx_path: Path | None,
    options: TvmConfig | dict[str, Any] | None = None,
) -> TvmRunner:
    """Import ``model`` into TVM, tune it (within the budget) and compile it, for selection.

    ``onnx_path`` is not used: TVM imports the PyTorch module through ``torch.export``.

    Raises:
        MissingDependencyError: TVM is not installed (one line with the install command).
        ConfigError: The model cannot be exported or imported (the message names the operator
            TVM's frontend lacks), or compiling fails.

    Example:
        >>> from slimkit.models import create_model
        >>> net = create_model("fmnist_tiny")
        >>> runner = build_runner(net, torch.zeros(1, 1, 28, 28), None)  # doctest: +SKIP
        >>> runner.tuning[1].stopped_by  # doctest: +SKIP
        'trials'
    """
    config = as_config(options, TvmConfig)
    _tvm()
    target = _target(config)
    imported = _Imported.from_torch(model, example_inputs)
    batches = config.batch_sizes or (int(example_inputs.shape[0]),)
    owned = config.out_dir is None
    folder = Path(tempfile.mkdtemp(prefix="slimkit-tvm-")) if owned else Path(config.out_dir)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    libraries: dict[int, Path] = {}
    tuning: dict[int, TuningSummary] = {}
    try:
        for batch in dict.fromkeys(batches):
            libraries[batch], summary = _compile(imported, batch, config, target, folder, True)
            if summary is not None:
                tuning[batch] = summary
        runner = TvmRunner(libraries, threads=config.threads)
    except BaseException:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    runner._imported, runner._config, runner._target = imported, config, target
    runner._owned_dir = folder if owned else None
    runner._module = model
    runner.tuning = tuning
    return runner


# --- import and compile ----------------------------------------------------------------------


@dataclass
class _Imported:
    """A model imported into Relax with a symbolic batch and its weights kept apart."""

    module: Any  # tvm.IRModule, weights as parameters
    params: list[Any]  # tvm tensors, in the order of main's weight parameters
    batch_var: Any  # the symbolic batch (tir.Var), or None when the batch is static
    model_hash: str
    static_batch: int  # the example's batch (the only one when batch_var is None)

    @classmethod
    def from_torch(cls, model: nn.Module, example_inputs: Tensor) -> _Imported:
        tvm = _tvm()
        relax = importlib.import_module("tvm.relax")
        frontend = importlib.import_module("tvm.relax.frontend.torch")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the TVM backend compiles an nn.Module, got {type(model).__name__}.")
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        was_training = model.training
        model.eval()
        try:
            try:
                program = torch.export.export(
                    model, (dynamic_batch_example(example_inputs),), dynamic_shapes=({0: batch},)
                )
            except Exception:  # a model whose batch cannot vary: import it as it is
                program = torch.export.export(model, (example_inputs,))
        except Exception as exc:
            raise ConfigError(
                f"torch.export cannot capture {type(model).__name__} for TVM: {_first_line(exc)}"
            ) from exc
        finally:
            model.train(was_training)
        try:
            mod = frontend.from_exported_program(program, keep_params_as_input=True)
        except Exception as exc:  # the frontend names the operator it lacks
            raise ConfigError(f"TVM cannot import the model: {_first_line(exc)}") from exc
        mod, params = relax.frontend.detach_params(mod)
        shape = getattr(mod["main"].params[0].ty, "shape", None)
        first = shape[0] if shape is not None and len(shape) else None
        batch_var = None if first is None or isinstance(first, int) or _is_int(first) else first
        digest = hashlib.sha256()
        digest.update(f"tvm {tvm.__version__}\n".encode())
        digest.update(mod.script(show_meta=False).encode())
        params_list = list(params.get("main", []))
        static = int(example_inputs.shape[0])
        return cls(mod, params_list, batch_var, digest.hexdigest()[:16], static)


def _compile(
    imported: _Imported,
    batch: int,
    config: TvmConfig,
    target_dict: dict[str, Any],
    folder: Path,
    tune: bool,
) -> tuple[Path, TuningSummary | None]:
    tvm = _tvm()
    relax = importlib.import_module("tvm.relax")
    ms = _meta_schedule()
    target = tvm.target.Target(target_dict)
    mod = imported.module
    if imported.batch_var is not None:
        mod = relax.transform.BindSymbolicVars({imported.batch_var: batch})(mod)
    elif batch != imported.static_batch:
        raise ConfigError(
            f"torch.export could not make this model's batch dynamic, so TVM compiles it for "
            f"batch {imported.static_batch} only, not {batch}; use that batch size."
        )
    weights = mod["main"].params[1:]
    mod = relax.transform.BindParams("main", dict(zip(weights, imported.params, strict=True)))(mod)
    with target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ]
        )(mod)
    records = _records_dir(config, target_dict, imported.model_hash)
    summary = None
    if tune and config.tunes:
        summary = _tune(mod, target, batch, config, records)
    with target, tvm.transform.PassContext(opt_level=3):
        if config.use_records and (records / "database_workload.json").is_file():
            with ms.database.JSONDatabase(work_dir=str(records)):
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        try:
            executable = tvm.compile(mod, target)
        except Exception as exc:
            raise ConfigError(f"TVM cannot compile the model: {_first_line(exc)}") from exc
    path = folder / f"model-b{batch}.so"
    executable.export_library(str(path))
    return path, summary


def _tune(mod: Any, target: Any, batch: int, config: TvmConfig, records: Path) -> TuningSummary:
    summaries = _read_summaries(records)
    previous = summaries.get(str(batch))
    if previous is not None and _covers(previous, config):
        log(f"tvm: batch {batch}: reusing {previous['trials']} tuning trials from {records}")
        return TuningSummary(batch, previous["trials"], previous["seconds"], previous["tasks"],
                             "cached", str(records))  # fmt: skip
    ms = _meta_schedule()
    records.mkdir(parents=True, exist_ok=True)
    kernels = ms.relax_integration.extract_tasks(mod, target)
    tasks = len(kernels)
    budget = " or ".join(
        ([f"{config.max_trials} trials"] if config.max_trials else [])
        + ([f"{config.tune_seconds:.0f} s"] if config.tune_seconds else [])
    )
    log(f"tvm: tuning batch {batch}: {tasks} kernels, budget {budget}; records in {records}")
    callback = _progress_callback(config)
    # Shared by every call: the cost model keeps learning from all measured candidates.
    cost_model = ms.cost_model.CostModel.create(
        "xgb" if importlib.util.find_spec("xgboost") else "random",
        num_tuning_cores=config.threads,
    )
    database = ms.database.JSONDatabase(work_dir=str(records))
    runner = ms.runner.LocalRunner(timeout_sec=120)
    # Heaviest kernels first (FLOPs x occurrences), so a short budget goes where time goes.
    order = sorted(range(tasks), key=lambda i: -_task_cost(kernels[i]))
    exhausted: set[int] = set()
    start = time.perf_counter()
    stopped_by = "trials"
    scratch = Path(tempfile.mkdtemp(prefix="slimkit-ms-"))
    with _tuning_environment(config.threads), callback.display(), _removed(scratch):
        # One kernel per MetaSchedule call, ``trials_per_round`` candidates each, round after
        # round: the budget is checked between calls (MetaSchedule cannot stop safely inside
        # one), and every call ends with its measurements in the database. One call over all
        # kernels would only write its records after a first pass over every kernel (over
        # 30 minutes for fmnist_resnet's 13 kernels on this loaded 2-core machine).
        while stopped_by == "trials" and callback.trials < config.trial_cap():
            progressed = False
            for i in order:
                if i in exhausted:
                    continue
                if callback.elapsed() >= config.time_cap():
                    stopped_by = "time"
                    break
                left = config.trial_cap() - callback.trials
                if left <= 0:
                    break
                before = callback.trials
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    [kernels[i]], str(records)
                )
                try:
                    ms.tune.tune_tasks(
                        tasks=contexts, task_weights=weights, work_dir=str(records),
                        max_trials_global=int(min(left, config.trials_per_round)),
                        num_trials_per_iter=config.trials_per_round,
                        builder=_in_process_builder(scratch), runner=runner, database=database,
                        cost_model=cost_model,
                        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                           callback.tvm_object],
                    )  # fmt: skip
                except Exception as exc:
                    raise ConfigError(f"TVM tuning failed: {_first_line(exc)}") from exc
                if callback.trials == before:  # this kernel's search space is exhausted
                    exhausted.add(i)
                else:
                    progressed = True
            if not progressed and stopped_by == "trials":
                stopped_by = "exhausted" if len(exhausted) == tasks else stopped_by
                break
    seconds = time.perf_counter() - start
    trials = callback.trials + (previous["trials"] if previous else 0)
    total_seconds = seconds + (previous["seconds"] if previous else 0.0)
    log(f"tvm: batch {batch}: {callback.trials} trials in {seconds:.0f} s (stopped by "
        f"{stopped_by}), {callback.errors} failed candidates")  # fmt: skip
    summaries[str(batch)] = {
        "trials": trials,
        "seconds": round(total_seconds, 1),
        "tasks": tasks,
        "trial_cap": _json_cap(config.trial_cap()),
        "time_cap": _json_cap(config.time_cap()),
        "stopped_by": stopped_by,
    }
    write_json(records / _SUMMARY_FILE, summaries)
    return TuningSummary(batch, trials, round(total_seconds, 1), tasks, stopped_by,
                         str(records))  # fmt: skip


def _task_cost(task: Any) -> float:
    try:
        analysis = importlib.import_module("tvm.s_tir.analysis")
        return float(task.weight) * float(analysis.estimate_tir_flops(task.dispatched[0]))
    except Exception:  # no estimate: keep the extraction order
        return 0.0


def _covers(previous: Mapping[str, Any], config: TvmConfig) -> bool:
    # An earlier tuning covers this request when its budgets were at least as large (or it
    # exhausted the search space); the records are then reused and nothing is tuned.
    if previous.get("stopped_by") == "exhausted":
        return True
    trial_cap = _from_json_cap(previous.get("trial_cap"))
    time_cap = _from_json_cap(previous.get("time_cap"))
    return trial_cap >= config.trial_cap() and time_cap >= config.time_cap()


def _json_cap(value: float) -> float | None:
    return None if value == float("inf") else value


def _from_json_cap(value: Any) -> float:
    return float("inf") if value is None else float(value)


def _read_summaries(records: Path) -> dict[str, Any]:
    path = records / _SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _records_dir(config: TvmConfig, target: Mapping[str, Any], model_hash: str) -> Path:
    root = Path(config.cache_dir).expanduser() if config.cache_dir else cache_root()
    mcpu = str(target.get("mcpu") or "generic")
    key = f"{mcpu}-{config.threads}t"
    extra = {k: v for k, v in target.items() if k not in ("kind", "mcpu", "num-cores")}
    if extra:  # a hand-written target (mattr, mtriple, ...) gets its own records
        key += "-" + hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return root / "tvm" / key / model_hash


def _target(config: TvmConfig) -> dict[str, Any]:
    if config.target is None:
        return host_target(config.threads)
    target = dict(config.target)
    target.setdefault("num-cores", config.threads)
    try:
        _tvm().target.Target(target)
    except Exception as exc:
        raise ConfigError(f"invalid TVM target {target}: {_first_line(exc)}") from exc
    return target


# --- tuning machinery ------------------------------------------------------------------------


class _Progress:
    """Measure callback: counts trials and failures, drives a progress bar."""

    def __init__(self, config: TvmConfig) -> None:
        self.config = config
        self.trials = 0
        self.errors = 0
        self.start = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None
        self.tvm_object: Any = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextmanager
    def display(self) -> Iterator[None]:
        self.start = time.perf_counter()
        with progress() as bar:
            self._bar = bar
            total = self.config.max_trials or None
            self._task = bar.add_task("tvm tuning", total=total, status="")
            yield
        self._bar = None

    def apply(self, results: Sequence[tuple[Any, Any]]) -> None:
        self.trials += len(results)
        self.errors += sum(1 for b, r in results if b.error_msg or r.error_msg)
        if self._bar is not None:
            budget = f"/{self.config.tune_seconds:.0f}" if self.config.tune_seconds else ""
            status = f"{self.elapsed():.0f}{budget} s, {self.errors} failed"
            self._bar.update(self._task, completed=self.trials, status=status)


def _progress_callback(config: TvmConfig) -> _Progress:
    ms = _meta_schedule()
    derived_object = importlib.import_module("tvm.ir.utils").derived_object
    state = _Progress(config)

    @derived_object
    class _Callback(ms.measure_callback.PyMeasureCallback):
        def apply(self, scheduler, task_id, candidates, builder_results, runner_results):  # type: ignore[no-untyped-def]
            state.apply(list(zip(builder_results, runner_results, strict=True)))

    state.tvm_object = _Callback()
    return state


def _in_process_builder(folder: Path) -> Any:
    """A MetaSchedule builder that compiles candidates in this process.

    The default ``LocalBuilder`` starts a fresh worker pool every round, and each worker
    imports all of TVM's tensor intrinsics (tens of seconds, more than its 30 s timeout on a
    busy machine). LLVM builds of CPU kernels are short and safe to run here. Candidates are
    written under ``folder``, which the caller deletes after the tuning.
    """
    ms = _meta_schedule()
    derived_object = importlib.import_module("tvm.ir.utils").derived_object
    remove_rewrite = importlib.import_module("tvm.s_tir.transform").RemoveWeightLayoutRewriteBlock
    tar = importlib.import_module("tvm.support.tar").tar
    build_tir = importlib.import_module("tvm.tirx").build  # tvm.build is deprecated

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):  # type: ignore[no-untyped-def]
            results = []
            for item in build_inputs:
                try:
                    mod = remove_rewrite(skip_tensor_rewrite=True)(item.mod)
                    lib = build_tir(mod, target=item.target)
                    path = os.path.join(tempfile.mkdtemp(dir=folder), "c." + tar.output_format)
                    lib.export_library(path, fcompile=tar)
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as exc:  # a candidate that does not build is a failed trial
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return _InProcessBuilder()


@contextmanager
def _removed(folder: Path) -> Iterator[Path]:
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _tuning_environment(threads: int) -> Iterator[None]:
    # The measurement workers read TVM_NUM_THREADS when they start; MetaSchedule's logger
    # prints a table per round, which the progress bar replaces.
    previous = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if previous is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = previous


# --- TVM imports and host facts --------------------------------------------------------------


def _tvm() -> Any:
    return require("tvm", "tvm", "the TVM backend")


def _meta_schedule() -> Any:
    _tvm()
    _load_cpu_intrinsics_only()
    return importlib.import_module("tvm.s_tir.meta_schedule")


def _load_cpu_intrinsics_only() -> None:
    """Register this CPU's tensor intrinsics without importing the GPU ones.

    ``tvm.s_tir.tensor_intrin`` imports the CUDA, ROCm, Hexagon, ... intrinsics on import
    (1-4 minutes here); MetaSchedule imports that package when it creates a tuning context.
    The package is put in ``sys.modules`` without running its ``__init__``, with the host's
    intrinsics module loaded, so that import finds it done. Only LLVM CPU targets are compiled
    by this backend, and they use only these.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    parent = importlib.import_module("tvm.s_tir")
    parent.tensor_intrin = package
    machine = platform.machine().lower()
    own = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm_cpu", "arm64": "arm_cpu",
           "riscv64": "riscv_cpu"}.get(machine)  # fmt: skip
    if own is not None:
        importlib.import_module(f"{name}.{own}")


def _set_runtime_threads(threads: int) -> None:
    """Size TVM's (process-wide) runtime thread pool, if another runner changed it.

    ``runtime.config_threadpool`` caps the pool at ``TVM_NUM_THREADS`` (else half the logical
    CPUs), so the variable is set first; mode 1 ("big" cores) is all cores on a homogeneous
    CPU.
    """
    global _POOL_THREADS
    if threads == _POOL_THREADS:
        return
    tvm = _tvm()
    os.environ["TVM_NUM_THREADS"] = str(threads)
    configure = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if configure is not None:
        configure(1, threads)
    _POOL_THREADS = threads


_POOL_THREADS: int | None = None


def _feature_key(name: str) -> str:
    # LLVM spells the kernel's avx512_vnni, avx_vnni and amx_tile as avx512vnni, avxvnni, amx-tile.
    return name.replace("-", "").replace("_", "")


def _risky(feature: str) -> bool:
    # Features a hypervisor commonly masks while LLVM's CPU name implies them.
    return feature.startswith(("avx512", "amx", "avxvnni", "avx10"))


def _is_int(expr: Any) -> bool:
    # An IntImm (a static dimension) has a value; a symbolic Var has a name.
    return hasattr(expr, "value") and not hasattr(expr, "name")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    interesting = [ln for ln in lines if "Error" in ln or "not supported" in ln.lower()]
    return (interesting or lines or [type(exc).__name__])[-1]
