"""Scale-out on Optuna storage: real worker processes on one study, killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from slimkit.errors import ConfigError
from slimkit.search import SearchConfig, create_study, open_storage, study_progress, study_result

WORKER = Path(__file__).with_name("search_worker_main.py")
CONFIG = SearchConfig(strategy="tpe", objectives=("params",), evaluator="none", trials=8)
State = optuna.trial.TrialState


def _spawn(url: str, study: str, delay: float, go: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLIMKIT_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, study, str(delay), str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _wait_ready(go: Path, n: int, procs: list[subprocess.Popen[str]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(go.parent.glob(f"{go.name}.ready.*"))) < n:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker exited early: {p.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.1)


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _slots_of_complete(storage, study: str) -> list[int]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    return sorted(t.user_attrs["slot"] for t in trials if t.state == State.COMPLETE)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("journal", marks=pytest.mark.slow)])
def test_two_workers_one_killed_and_restarted_complete_every_trial_once(
    tmp_path: Path, kind: str
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "s.journal")
    storage = open_storage(url, heartbeat_interval=1, grace_period=3)
    create_study(CONFIG, storage, "fmnist")  # once, before any worker starts
    together, later = tmp_path / "go", tmp_path / "go-restart"
    doomed = _spawn(url, "fmnist", 60.0, together)  # its first trial would take a minute
    steady = _spawn(url, "fmnist", 0.3, together)
    restarted = _spawn(url, "fmnist", 0.3, later)  # imports now, starts after the kill
    _wait_ready(together, 2, [doomed, steady])
    together.touch()  # two workers on one study, at once
    study = optuna.load_study(study_name="fmnist", storage=storage)
    deadline = time.monotonic() + 120
    while not (stale := _trial_of(study, doomed.pid)):
        if doomed.poll() is not None:
            pytest.fail(f"worker exited: {doomed.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "worker never started"
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)  # mid-trial
    doomed.wait()
    _wait_ready(later, 1, [restarted])
    later.touch()
    reports = [_finish(steady), _finish(restarted)]
    assert _slots_of_complete(storage, "fmnist") == list(range(8))  # none lost, none twice
    trials = study.get_trials()
    [failed] = [t for t in trials if t.state == State.FAIL]
    assert failed.number == stale.number  # the killed worker's trial was detected...
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == stale.number]
    assert retry.state == State.COMPLETE  # ...and retried, with the same architecture and slot
    assert retry.params == stale.params and retry.user_attrs["slot"] == stale.user_attrs["slot"]
    assert sum(r["completed"] for r in reports) == 8 and reports[0]["completed"] >= 1
    states = study_progress(storage, "fmnist")["states"]
    assert "RUNNING" not in states and "WAITING" not in states
    result = study_result(storage, "fmnist")
    assert [t.number for t in result.trials] == list(range(8))
    assert result.best.metrics["params"] == min(t.metrics["params"] for t in result.trials)


def _trial_of(study: optuna.Study, pid: int) -> optuna.trial.FrozenTrial | None:
    """The running trial of worker ``pid`` once its architecture is chosen."""
    for t in study.get_trials(states=(State.RUNNING,)):
        if t.user_attrs.get("worker", {}).get("pid") == pid and "arch" in t.user_attrs:
            return t
    return None


def test_bad_storage_urls_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown scheme 'redis'.*postgresql://"):
        open_storage("redis://localhost/0")
    with pytest.raises(
        ConfigError, match=r"(?s)cannot open the storage.*unable to open.*Check the URL"
    ):
        open_storage(f"sqlite:///{tmp_path}/missing/dir/s.db")
    with pytest.raises(ConfigError, match=r"(?s)cannot open.*user:\*\*\*@127.*psycopg2"):
        open_storage("postgresql://user:secret@127.0.0.1:1/db")
    with pytest.raises(ConfigError, match="is a folder"):
        open_storage(tmp_path)


def test_study_is_created_once_and_refuses_one_process_strategies(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "s.journal")
    create_study(CONFIG, storage, "once")
    with pytest.raises(ConfigError, match="exists already"):
        create_study(CONFIG, storage, "once")
    with pytest.raises(ConfigError, match="keeps its state in one process"):
        create_study(CONFIG.model_copy(update={"strategy": "evolution"}), storage, "evo")
    with pytest.raises(ConfigError, match="slimkit search supernet"):
        create_study(SearchConfig(strategy="tpe", evaluator="supernet"), storage, "sup")
    assert study_progress(storage, "once") == {
        "study": "once", "budget": 8, "states": {"WAITING": 8}, "slots_done": 0,
    }  # fmt: skip
