"""Distillation with two processes under torchrun (gloo on CPU): the same code as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimkit.train._checkpoint import load_checkpoint
from slimkit.train._distributed import available_cores

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    from slimkit.data import DataConfig, load_dataset
    from slimkit.distill import DistillConfig, teacher_outputs
    from slimkit.distill._distill import run_distillation
    from slimkit.models import create_model

    out = sys.argv[1]
    data = load_dataset(DataConfig(train_subset=512, test_subset=200))
    torch.manual_seed(0)
    teacher = create_model("fmnist_tiny")
    torch.manual_seed(int(os.environ["RANK"]))  # different starts: DDP must align them
    student = create_model("fmnist_tiny", widths=(8, 16, 32))
    threads = []
    student.register_forward_hook(lambda m, a, o: threads.append(torch.get_num_threads()))
    train = {"epochs": 2, "batch_size": 64, "augment": False, "checkpoint_dir": out + "/ckpt"}
    result = run_distillation(student, teacher, data, DistillConfig(train=train))
    rank = os.environ["RANK"]
    # The teacher's logits, computed half by each process and shared, are all in place.
    shared = teacher_outputs(teacher, data.train_inputs)
    with torch.no_grad():
        local = teacher.eval()(data.train_inputs)
    cache_error = float((shared - local).abs().max())
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, f"{out}/rank{rank}.safetensors")
    report = {"threads": sorted(set(threads)), "world": result.world_size,
              "history": result.history, "cache_error": cache_error}
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(report, f)
    """
)


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_on_their_share_of_the_cores(
    tmp_path: Path,
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # Each worker must set its own thread count, whatever the environment says.
    env = {**os.environ, "SLIMKIT_PROGRESS": "0", "OMP_NUM_THREADS": "4"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node=2", str(script), str(tmp_path)]  # fmt: skip
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name  # buffers included
    share = max(1, available_cores() // 2)
    for report in reports:
        assert report["world"] == 2
        assert report["threads"] == [share]
        assert [h["epoch"] for h in report["history"]] == [1, 2]
        assert report["cache_error"] < 1e-4
    # Loss and test accuracy are the processes' common values (summed over the shards).
    assert reports[0]["history"] == [
        {**h, "seconds": reports[0]["history"][i]["seconds"]}
        for i, h in enumerate(reports[1]["history"])
    ]
    # One checkpoint, from rank 0, after the last epoch.
    checkpoint = load_checkpoint(tmp_path / "ckpt")
    assert checkpoint["epoch"] == 1
    assert torch.equal(checkpoint["model"]["student.0.weight"], weights[0]["0.weight"])
