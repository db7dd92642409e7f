"""Scale-out on Optuna storage: create a study once, then start any number of workers.

The study holds the whole budget from the start: ``create_study`` stores the search config in
the study and enqueues one empty trial per slot (``slot`` 0..N-1). A worker pops a waiting
trial (atomically, in the storage), lets the study's sampler fill in the architecture, measures
it and reports the values; so N trials complete, whatever the number of workers, and none is
run twice. A trial left RUNNING by a dead worker is failed and re-enqueued with the same
architecture and slot:

- on a database (``postgresql://...``, ``mysql://...``, ``sqlite:///...``) by Optuna's
  heartbeat: each worker's trial beats every ``heartbeat_interval`` seconds; one silent for
  ``grace_period`` is failed and retried (``RetryFailedTrialCallback``) by the next worker that
  looks;
- on a journal file (one machine) by process liveness: a worker records its host, pid and the
  pid's start time on its trial, and any worker on that host fails and retries the trials of
  processes that no longer exist.

Commands (N workers; each takes ``cores // N`` torch threads on its machine)::

    slimkit search create --config search.yaml --storage runs/search.journal --study fmnist
    slimkit search worker --storage runs/search.journal --study fmnist --workers 2 &
    slimkit search worker --storage runs/search.journal --study fmnist --workers 2 &
    slimkit search status --storage runs/search.journal --study fmnist --out runs/search
"""

from __future__ import annotations

import inspect
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from slimkit._optional import require
from slimkit._runtime import log
from slimkit.data import DataConfig, DataSplits, load_dataset
from slimkit.errors import ConfigError
from slimkit.search._config import STORAGE_STRATEGIES, SearchConfig
from slimkit.search._evaluate import CandidateEvaluator, Evaluation, as_evaluation, search_splits
from slimkit.search._fmnist_space import get_space
from slimkit.search._search import SearchResult, TrialRecord, _size
from slimkit.search._strategies import make_sampler, quiet_optuna, set_constraints

__all__ = [
    "WorkerReport",
    "create_study",
    "load_study_config",
    "open_storage",
    "run_worker",
    "study_result",
]

CONFIG_ATTR, TRIALS_ATTR = "slimkit_config", "slimkit_trials"
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql")


def open_storage(
    url: str | Path | None, *, heartbeat_interval: int | None = 10,
    grace_period: int | None = None, max_retry: int | None = 3,
) -> Any:  # fmt: skip
    """An Optuna storage for ``url``: a journal file path, a database URL, or ``None`` (memory).

    A database gets heartbeats (``heartbeat_interval`` seconds; a trial silent for
    ``grace_period``, default twice that, is failed) and retries of the failed trials (at most
    ``max_retry`` times each).

    Raises:
        ConfigError: the URL's scheme is unknown, or the storage cannot be opened (the message
            says why and what to check).

    Example:
        >>> import tempfile
        >>> type(open_storage(tempfile.mkdtemp() + "/s.journal")).__name__
        'JournalStorage'
        >>> open_storage("ftp://host/x")
        Traceback (most recent call last):
        ...
        slimkit.errors.ConfigError: storage 'ftp://host/x': unknown scheme 'ftp'. Use a journal ...
    """
    optuna = require("optuna", "search", "Search on Optuna storage")
    if url is None:
        return optuna.storages.InMemoryStorage()
    text = str(url)
    if "://" not in text:
        path = Path(text)
        if path.exists() and path.is_dir():
            raise ConfigError(f"storage {text!r} is a folder; give a journal file path.")
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    scheme = text.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in _RDB_SCHEMES:
        raise ConfigError(
            f"storage {text!r}: unknown scheme {scheme!r}. Use a journal file path "
            "(runs/search.journal) or a database URL: postgresql://user:password@host/db, "
            "mysql://..., sqlite:///path.db"
        )
    callback = _retry_callback(max_retry) if heartbeat_interval else None
    # Optuna >= 4.9 renamed the stale-trial callback argument.
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    key = "heartbeat_stale_trial_callback"
    key = key if key in params else "failed_trial_callback"
    sqlite = scheme == "sqlite"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                text, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None,
                **{key: callback},
            )  # fmt: skip
    except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot open"
        raise ConfigError(
            f"cannot open the storage {_redact(text)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}\nCheck the URL, that the database "
            "server is reachable and that its Python driver is installed (PostgreSQL: "
            "pip install psycopg2-binary)."
        ) from exc
    if sqlite:
        _serialize_sqlite(storage.engine)
    return storage


def _serialize_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    Python's sqlite3 driver begins a transaction only at the first write, so two workers can
    both read a trial as WAITING and both take it; Optuna's ``SELECT ... FOR UPDATE`` is a no-op
    on SQLite. Serialized transactions make popping, finishing and failing a trial atomic.
    (SQLAlchemy's documented recipe for pysqlite.)
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        # Write-ahead log: readers do not wait for the writer, commits need no full sync.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks are dropped


def _retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that enqueues a failed trial again with the same parameters."""
    optuna = require("optuna", "search", "Search on Optuna storage")
    storages = optuna.storages
    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return (cls or storages.RetryFailedTrialCallback)(max_retry=max_retry)


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def create_study(
    config: SearchConfig, storage: Any, study_name: str, *, trials: int | None = None
) -> Any:
    """Create the study once, with the config stored in it and its N trial slots enqueued.

    Raises:
        ConfigError: the study exists already, or the strategy cannot run on storage.
    """
    optuna = require("optuna", "search", "Search on Optuna storage")
    if config.strategy not in STORAGE_STRATEGIES:
        raise ConfigError(
            f"strategy {config.strategy!r} keeps its state in one process; on storage use one "
            f"of {', '.join(STORAGE_STRATEGIES)} (or run it in-process with `slimkit search run`)."
        )
    if config.evaluator == "supernet" and config.supernet_path is None:
        raise ConfigError(
            "workers share one trained supernet: train it once with `slimkit search supernet "
            "--config ... --out runs/supernet` and set supernet_path: runs/supernet."
        )
    storage = storage if not isinstance(storage, str | Path) else open_storage(storage)
    n = trials or config.trials
    try:
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage, study_name=study_name, directions=config.objective().directions
            )
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            f"study {study_name!r} exists already in this storage: start workers on it, or "
            "choose another --study name."
        ) from None
    study.set_user_attr(CONFIG_ATTR, config.model_dump(mode="json"))
    study.set_user_attr(TRIALS_ATTR, n)
    for slot in range(n):
        study.enqueue_trial({}, user_attrs={"slot": slot})
    return study


def load_study_config(study: Any) -> SearchConfig:
    """The :class:`SearchConfig` stored in a study by :func:`create_study`."""
    data = study.user_attrs.get(CONFIG_ATTR)
    if data is None:
        raise ConfigError(
            f"study {study.study_name!r} was not created by slimkit (no {CONFIG_ATTR}); "
            "create it with `slimkit search create`."
        )
    return SearchConfig.parse(data)


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int
    failed: int
    recovered: int
    threads: int
    seconds: float


def run_worker(
    storage: Any, study_name: str, *, data: DataSplits | None = None,
    evaluate: Callable[[Any], Evaluation | Mapping[str, float]] | None = None,
    workers: int = 1, threads: int | None = None, max_trials: int | None = None,
    poll_seconds: float | None = None,
) -> WorkerReport:  # fmt: skip
    """Evaluate the study's waiting trials until none is left; returns what it did.

    A trial whose evaluation raises (or is interrupted with Ctrl-C) is enqueued again, like
    the trial of a dead worker, up to 3 times.

    Args:
        storage: An Optuna storage or its URL (see :func:`open_storage`).
        study_name: The study made by :func:`create_study`.
        data: The data set; default the one the stored config names.
        evaluate: ``evaluate(arch)`` instead of the built-in evaluator.
        workers: Workers on this machine: torch threads default to ``cores // workers``.
        threads: Torch threads of this worker (overrides ``workers``).
        max_trials: Stop after this many trials.
        poll_seconds: How often to look again while other workers' trials still run (default:
            the heartbeat interval, or 1 s).
    """
    storage = storage if not isinstance(storage, str | Path) else open_storage(storage)
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(threads)
    worker = _Worker(storage, study_name, data, evaluate, threads, poll_seconds)
    return worker.run(max_trials)


class _Worker:
    """One worker's loop: recover dead workers' trials, pop a waiting one, evaluate, report."""

    def __init__(
        self, storage: Any, study_name: str, data: DataSplits | None,
        evaluate: Callable[[Any], Evaluation | Mapping[str, float]] | None,
        threads: int, poll_seconds: float | None,
    ) -> None:  # fmt: skip
        self.optuna = require("optuna", "search", "Search on Optuna storage")
        self.storage, self.threads = storage, threads
        self.study = self.optuna.load_study(study_name=study_name, storage=storage)
        self.study_id = storage.get_study_id_from_name(study_name)
        config = load_study_config(self.study)
        # Each worker its own seed: two random or TPE workers must not propose the same archs.
        self.study.sampler = make_sampler(
            config.strategy, config.seed + os.getpid(), config.population
        )
        self.space = get_space(config.space, **config.space_options)
        self.objective = config.objective()
        self.evaluate = evaluate or _default_evaluator(config, data)
        self.me = _identity()
        self.heartbeat = _heartbeat_interval(storage)
        self.poll = poll_seconds or float(self.heartbeat or 1)
        self.counts = {"completed": 0, "failed": 0, "recovered": 0}
        self.current: list[int] = []
        log(f"worker {self.me['host']}:{self.me['pid']} on study {study_name!r}, "
            f"{threads} torch thread(s)")  # fmt: skip

    def run(self, max_trials: int | None) -> WorkerReport:
        start = time.perf_counter()
        state = self.optuna.trial.TrialState
        while max_trials is None or self.counts["completed"] + self.counts["failed"] < max_trials:
            self.counts["recovered"] += _recover_stale(
                self.study, self.storage, self.study_id, self.heartbeat
            )
            if not self.study.get_trials(deepcopy=False, states=(state.WAITING,)):
                running = self.study.get_trials(deepcopy=False, states=(state.RUNNING,))
                if running and self.heartbeat:  # a dead worker's trial returns once stale
                    time.sleep(self.poll)
                    continue
                break
            self._one_trial()
        c = self.counts
        seconds = time.perf_counter() - start
        return WorkerReport(c["completed"], c["failed"], c["recovered"], self.threads, seconds)

    def _one_trial(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
                self.study.optimize(self._objective, n_trials=1, catch=(Exception,))
        except KeyboardInterrupt:
            self._settle()  # the interrupted trial goes back to the queue
            raise
        self._settle()

    def _settle(self) -> None:
        """Count the trial just run; enqueue it again if its evaluation failed."""
        if not self.current:
            return
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.study_id, self.current.pop()
        )
        last = self.storage.get_trial(trial_id)
        state = self.optuna.trial.TrialState
        if last.state == state.FAIL:
            self.counts["failed"] += 1
            _retry(self.study, last)  # same slot, same architecture
        elif last.state == state.COMPLETE:
            self.counts["completed"] += 1

    def _objective(self, trial: Any) -> list[float]:
        self.current.append(trial.number)
        if trial.user_attrs.get("slot") is None:
            # Another worker took the last waiting trial between our look and our pop.
            trial.set_user_attr("surplus", True)
            raise self.optuna.TrialPruned("surplus trial: every slot of the study is taken")
        trial.set_user_attr("worker", self.me)
        arch = self.space(trial)
        trial.set_user_attr("arch", arch)
        metrics = self.objective.complete(as_evaluation(self.evaluate(arch)).metrics)
        trial.set_user_attr("metrics", metrics)
        set_constraints(trial, self.objective.constraints(metrics))
        return self.objective.values(metrics)


def _default_evaluator(config: SearchConfig, data: DataSplits | None) -> CandidateEvaluator:
    if data is None and config.evaluator != "none":
        data = load_dataset(DataConfig(name=config.data))
    return CandidateEvaluator(config, search_splits(data, config) if data is not None else None)


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid)}


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of proc(5), counted after the command name


def _process_gone(who: Mapping[str, Any]) -> bool:
    """Whether the worker ``who`` (on this host) has exited or been killed."""
    pid = int(who["pid"])
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie: killed, not yet reaped by its parent
        return True
    started = who.get("started")
    return started is not None and int(fields[19]) != int(started)


def _heartbeat_interval(storage: Any) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


def _recover_stale(study: Any, storage: Any, study_id: int, heartbeat: int | None) -> int:
    """Fail and re-enqueue the trials of dead workers; returns how many."""
    optuna = require("optuna", "search", "Search on Optuna storage")
    if heartbeat:
        before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        return after - before
    host = socket.gethostname()
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = trial.user_attrs.get("worker")
        if who is None:
            # Popped but not yet labelled: only a worker killed in that instant leaves this.
            started = trial.datetime_start
            if started is None or datetime.now() - started < timedelta(minutes=2):
                continue
        elif who.get("host") != host or not _process_gone(who):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker recovered it first
        log(f"trial {trial.number} of a dead worker failed; its slot is enqueued again")
        _retry(study, storage.get_trial(trial_id))
        recovered += 1
    return recovered


def _retry(study: Any, trial: Any) -> None:
    """Enqueue a failed trial again (same architecture and slot), as RDB storage does."""
    optuna = require("optuna", "search", "Search on Optuna storage")
    if trial.user_attrs.get("slot") is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _retry_callback(3)(study, trial)


def study_result(storage: Any, study_name: str) -> SearchResult:
    """The study's trials (the completed ones, one per slot) as a :class:`SearchResult`."""
    optuna = require("optuna", "search", "Search on Optuna storage")
    storage = storage if not isinstance(storage, str | Path) else open_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    config = load_study_config(study)
    objective = config.objective()
    records = []
    for t in study.get_trials(deepcopy=False):
        if t.state != optuna.trial.TrialState.COMPLETE or "metrics" not in t.user_attrs:
            continue
        metrics = t.user_attrs["metrics"]
        records.append(TrialRecord(
            t.user_attrs["slot"], dict(t.params), t.user_attrs["arch"], metrics, list(t.values),
            objective.feasible(metrics),
            (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_start else 0.0,
        ))  # fmt: skip
    records.sort(key=lambda r: r.number)
    space = get_space(config.space, **config.space_options)
    return SearchResult(config, records, sum(r.seconds for r in records), _size(space))


def study_progress(storage: Any, study_name: str) -> dict[str, Any]:
    """Counts of the study's trials by state, slots done and the budget."""
    optuna = require("optuna", "search", "Search on Optuna storage")
    storage = storage if not isinstance(storage, str | Path) else open_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    done = {t.user_attrs.get("slot") for t in trials if t.state.name == "COMPLETE"}
    done.discard(None)
    return {"study": study_name, "budget": study.user_attrs.get(TRIALS_ATTR), "states": states,
            "slots_done": len(done)}  # fmt: skip
