"""Two-process CPU DDP (gloo) with accelerate: a patched timm model trains (the loss decreases), no unused-parameter
error (DDP's default find_unused_parameters=False fails on the second step if any parameter gets no gradient), and
both ranks end with bit-identical parameters.

accelerate 1.16's ``accelerate launch --cpu --num_processes 2`` starts a single process (several CPU processes go
through mpirun there); ``--multi_gpu`` starts them with torchrun, and the script's ``--cpu`` keeps them on the CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune_accelerate.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_ddp_trains_identical_replicas(tmp_path):
    pytest.importorskip("accelerate")
    pytest.importorskip("timm")
    report = tmp_path / "report"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           str(EXAMPLE), "--cpu", "--model", "convnext", "--steps", "12", "--batch-size", "8",
           "--grad-accum", "2", "--no-progress", "--output-dir", str(tmp_path / "run"), "--report", str(report)]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [12, 12]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # identical replicas
    losses = ranks[0]["losses"]
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()  # rank 0 saved the finalized model
