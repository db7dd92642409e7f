"""One worker of distill_fmnist.py's torchrun job (d): the KD run of part (a), data parallel.

    torchrun --standalone --nproc_per_node=2 benchmarks/_distill_ddp.py JOB.json

The job file names the teacher folder, its cached logits, the data, the student and the
DistillConfig; rank 0 writes the result (history, processes, threads per process) to ``out``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from slimkit._io import write_json
from slimkit.data import DataConfig, load_dataset
from slimkit.distill import DistillConfig
from slimkit.distill._distill import run_distillation
from slimkit.models import create_model
from slimkit.serialize import load_model


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    data = load_dataset(DataConfig.model_validate(job["data"]))
    teacher = load_model(job["teacher"])
    logits = torch.load(job["logits"], weights_only=True)
    torch.manual_seed(job["seed"])  # the same start as the one-process run
    student = create_model(job["student"])
    config = DistillConfig.model_validate(job["distill"])
    result = run_distillation(student, teacher, data, config, teacher_logits=logits)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(
            Path(job["out"]),
            {"history": result.history, "processes": result.world_size,
             "threads": result.threads, "seconds": result.seconds},
        )  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
