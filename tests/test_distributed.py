"""Two CPU processes with gloo through torchrun: in-sync weights, one run folder, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TINY = ["--channels", "8", "--batch-size", "16", "--timesteps", "50"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mnist_diffusion",
        "train",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_ranks_train_in_sync_and_resume(tmp_path, data_dir):
    artifacts = tmp_path / "artifacts"
    common = ["--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)]
    out = torchrun(*TINY, "--max-steps", "4", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((artifacts / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote no folder of its own
    run_dir = runs[0]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    digests = records[-1]["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4

    out = torchrun("--resume", run_dir.name, "--max-steps", "6", *common)  # a longer budget: a child run
    assert out.returncode == 0, out.stderr[-3000:]
    child = sorted((artifacts / "runs").iterdir())[-1]
    assert child != run_dir and len(list((artifacts / "runs").iterdir())) == 2
    assert json.loads((child / "run.json").read_text())["parent"] == {"run": run_dir.name, "step": 4}
    assert json.loads((child / "checkpoint.json").read_text())["step"] == 6
    digests = [json.loads(line) for line in (child / "metrics.jsonl").read_text().splitlines()][-1][
        "rank_weight_sha256"
    ]
    assert digests[0] == digests[1]
