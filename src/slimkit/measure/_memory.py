"""Peak RAM of inference, measured in a fresh spawned process.

The parent's own RSS is polluted by everything it has done (data sets, other models, the
allocator's free lists), so the runner is rebuilt in a new interpreter. The child reads its RSS
with torch imported (the baseline), rebuilds the runner, runs a few batches and reads its
high-water mark (``VmHWM``). Peak RAM is the difference: what the model and its inference add
over an idle interpreter with torch imported. Linux only (it reads ``/proc/self/status``).

RSS counts every resident page, including the runtime's own machine code paged in by the first
inference: for PyTorch eager that is about 30 MB on its own, so a tiny model's peak RAM is
mostly the runtime's, and ratios between two small models understate the difference.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing as mp
import pickle
import sys
import tempfile
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slimkit.errors import SlimkitError
from slimkit.measure._runner import Runner

__all__ = ["MeasurementError", "MemoryReading", "measure_peak_ram"]

DEFAULT_TIMEOUT_S = 600.0


class MeasurementError(SlimkitError, RuntimeError):
    """A measurement could not be taken; the message says why and how to skip it."""


@dataclass(frozen=True)
class MemoryReading:
    """Peak RAM of inference in the child process, in bytes.

    Attributes:
        peak_ram_bytes: ``VmHWM`` minus the baseline RSS: what the runner adds.
        peak_rss_bytes: The absolute ``VmHWM`` of the child.
        baseline_rss_bytes: RSS of the child with torch imported, before the runner was built.
    """

    peak_ram_bytes: int
    peak_rss_bytes: int
    baseline_rss_bytes: int


def measure_peak_ram(
    runner: Runner,
    inputs: Tensor,
    *,
    threads: int = 1,
    runs: int = 3,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> MemoryReading:
    """Run ``runner`` on ``inputs`` in a spawned child process and return its peak RAM.

    Raises:
        MeasurementError: The runner cannot be sent to a child, or the child failed or timed out.

    Example:
        >>> import torch
        >>> from slimkit.measure import as_runner
        >>> reading = measure_peak_ram(as_runner(torch.nn.Linear(64, 64)), torch.zeros(8, 64))
        >>> reading.peak_rss_bytes > reading.baseline_rss_bytes
        True
    """
    if not sys.platform.startswith("linux"):
        raise MeasurementError(
            "peak RAM is measured from /proc/self/status, which only Linux has; "
            "pass ProfileConfig(memory=False) on this system."
        )
    spec = runner.child_spec()
    try:
        spec_bytes = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise MeasurementError(
            f"the {runner.name} runner cannot be pickled for the peak-RAM child process ({exc}); "
            "pass ProfileConfig(memory=False) to skip peak RAM."
        ) from exc
    with tempfile.TemporaryDirectory(prefix="slimkit-ram-") as tmp:
        # A file, not the pipe: a large write into a pipe would block if the child hung.
        payload = Path(tmp) / "payload.pkl"
        payload.write_bytes(
            pickle.dumps((inputs, spec.module, spec_bytes), pickle.HIGHEST_PROTOCOL)
        )
        del spec_bytes
        result = _run_child(str(payload), threads, runs, timeout)
    return MemoryReading(**result)


def _run_child(payload: str, threads: int, runs: int, timeout: float) -> dict[str, int]:
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main,
        args=(sender, payload, threads, runs),
        name="slimkit-peak-ram",
        daemon=True,
    )
    proc.start()
    sender.close()
    try:
        ready = wait([receiver, proc.sentinel], timeout)
        if not ready:
            proc.kill()
            raise MeasurementError(
                f"the peak-RAM child process gave no result within {timeout:g} s and was "
                "stopped. Pass ProfileConfig(memory=False) to skip peak RAM."
            )
        status, value = _receive(receiver)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        receiver.close()
    if status == "ok":
        return value
    if status == "error":
        raise MeasurementError(f"the peak-RAM child process failed:\n{value}")
    raise MeasurementError(
        f"the peak-RAM child process exited with code {proc.exitcode} without a result; its "
        "error, if any, is on stderr. A negative code is the signal that killed it (-9: out of "
        "memory). A child that fails at start-up is usually re-importing the __main__ module "
        '(spawn does): guard a script\'s entry with `if __name__ == "__main__":`; code piped '
        "on stdin cannot be re-imported. Pass ProfileConfig(memory=False) to skip peak RAM."
    )


def _receive(receiver: Connection) -> tuple[str, Any]:
    # The child may have exited without sending (killed, or failed while starting up).
    if not receiver.poll():
        return "died", None
    try:
        return receiver.recv()
    except EOFError:
        return "died", None


def _child_main(conn: Connection, payload: str, threads: int, runs: int) -> None:
    """Entry point of the spawned child: baseline RSS, build the runner, run, read VmHWM."""
    try:
        torch.set_num_threads(threads)
        with open(payload, "rb") as f:
            inputs, module, spec_bytes = pickle.load(f)
        importlib.import_module(module)
        gc.collect()
        baseline = _status_kib("VmRSS")
        spec = pickle.loads(spec_bytes)
        del spec_bytes
        gc.collect()
        # Forget the transient copies made while unpickling: they are transport, not inference.
        _reset_peak()
        runner = spec.build()
        for _ in range(runs):
            runner(inputs)
        peak = _status_kib("VmHWM")
        runner.close()
        conn.send(("ok", _reading(baseline, peak)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _reading(baseline_kib: int, peak_kib: int) -> dict[str, int]:
    return {
        "peak_ram_bytes": max(peak_kib - baseline_kib, 0) * 1024,
        "peak_rss_bytes": peak_kib * 1024,
        "baseline_rss_bytes": baseline_kib * 1024,
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise MeasurementError(f"/proc/self/status has no {field} line")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0). Where it is not
    # allowed, the peak also holds the unpickling copies: an over-estimate, never an under-one.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
