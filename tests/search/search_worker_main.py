"""A search worker process for the scale-out tests (run as a script, not collected by pytest).

    python search_worker_main.py STORAGE STUDY DELAY_SECONDS GO_FILE

It imports everything first, then waits for GO_FILE to exist (so that tests can start several
workers together, or hold a restarted one until the first is dead), then runs
:func:`slimkit.search.run_worker` with a real, deliberately slow evaluation: the parameter count
of the candidate's ``fmnist_searched`` model, after sleeping DELAY_SECONDS. Prints the worker's
report as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from slimkit.measure import count_params
from slimkit.models import create_model
from slimkit.search import open_storage, run_worker


def main() -> int:
    url, study, delay, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
    storage = open_storage(url, heartbeat_interval=1, grace_period=3)

    def evaluate(arch: dict) -> dict[str, float]:
        params, _ = count_params(create_model("fmnist_searched", arch=arch))
        time.sleep(delay)
        return {"params": float(params)}

    Path(f"{go}.ready.{os.getpid()}").touch()  # imports done
    while not go.exists():
        time.sleep(0.05)
    report = run_worker(storage, study, evaluate=evaluate, threads=1, poll_seconds=0.3)
    print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
