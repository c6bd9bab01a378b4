"""Fault injection: training processes killed with SIGKILL at chosen moments (inside the writes
of the checkpoint, its JSON copy, the guide, the final weights and the manifest, and mid-step),
interrupted with Ctrl-C twice, and a full disk. Each time nothing under its real name is
half-written, `train --resume RUN` (no flags) finishes the run, and its final weights equal an
uninterrupted run's bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import full_disk
from safetensors.torch import load_file
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.io import load_tensors
from mnist_diffusion.runs.checkpoint import read_checkpoint
from mnist_diffusion.runs.store import read_metrics, verify_manifest

runner = CliRunner()
# A tiny default-preset run: 32 steps per epoch on the 512 fake images; 2 epochs planned, stopped at
# step 40. Checkpoints at steps 0, 32 and 40; the guide at step 26 (40% of 64); manifests after each
# checkpoint and last after the final weights.
TRAIN = [
    "train",
    "--channels",
    "8",
    "--channel-mult",
    "1,2,2",
    "--batch-size",
    "16",
    "--timesteps",
    "50",
    "--epochs",
    "2",
    "--max-steps",
    "40",
    "--grid",
    "4",
]
# (name, the write to pause in as NAME:K, or "mid-step": killed between steps once the guide exists)
KILL_POINTS = [
    ("mid-step", None),
    ("guide", "guide.safetensors:1"),
    ("checkpoint", "checkpoint.safetensors:2"),
    ("checkpoint-json", "checkpoint.json:3"),
    ("final-weights", "model.safetensors:1"),
    ("final-manifest", "manifest.json:4"),
]


PAUSE_IN_WRITE = Path(__file__).with_name("pause_in_write.py")  # runs the CLI, pausing in the write NAME:K


def start(artifacts: Path, data_dir: Path, pause: str | None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = [str(PAUSE_IN_WRITE), pause] if pause else ["-m", "mnist_diffusion"]
    cmd = [sys.executable, *launcher, *TRAIN, "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def wait_until(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout  # a hang guard, not a speed limit
    while not condition():
        assert proc.poll() is None, f"the training process ended early: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def wait_for_pause(proc: subprocess.Popen) -> None:
    """Read the process's stderr until the write hook says it paused."""
    deadline = time.time() + 300
    for line in proc.stderr:
        if "paused in the write of" in line:  # after any progress-bar output on that line
            return
        assert time.time() < deadline, "timed out"
    raise AssertionError(f"the process ended without pausing (exit {proc.wait()})")


def run_folder(artifacts: Path) -> Path:
    (run_dir,) = (artifacts / "runs").iterdir()
    return run_dir


def resume(artifacts: Path, data_dir: Path, run_dir: Path):
    return runner.invoke(
        app,
        [
            "train",
            "--resume",
            run_dir.name,
            "--grid",
            "4",
            "--artifacts-dir",
            str(artifacts),
            "--data-dir",
            str(data_dir),
        ],
    )


def assert_nothing_half_written(run_dir: Path) -> None:
    """Every file under its real name is whole: the safetensors files match their digests and the
    JSON files parse (a write in progress only ever lives under a hidden temporary name)."""
    for path in run_dir.glob("*.safetensors"):
        load_tensors(path)
    for path in run_dir.glob("*.json"):
        json.loads(path.read_text())


def assert_finished_like(run_dir: Path, reference: Path) -> None:
    a, b = load_file(reference / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from a straight run"
    assert set(verify_manifest(run_dir).values()) == {"ok"}
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == sorted(set(steps)), f"a step is logged twice: {steps}"
    assert not list(run_dir.glob(".*.tmp"))  # temporary files of killed writes are cleaned up


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir) -> Path:
    """The uninterrupted run, in this process (one thread, like the killed ones)."""
    artifacts = tmp_path_factory.mktemp("straight")
    result = runner.invoke(app, [*TRAIN, "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    return run_folder(artifacts)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Every kill point at once (they share the two cores' time), and a run stopped by Ctrl-C
    twice inside the step-32 checkpoint write: name -> artifacts folder. "full-disk" is a copy of
    the run killed inside that write, for the full-disk test."""
    procs = {}
    for name, pause in [*KILL_POINTS, ("ctrl-c-twice", "checkpoint.safetensors:2")]:
        artifacts = tmp_path_factory.mktemp(f"killed-{name}")
        procs[name] = (artifacts, pause, start(artifacts, data_dir, pause))
    try:
        for name, (artifacts, pause, proc) in procs.items():
            if pause:
                wait_for_pause(proc)
            else:
                wait_until(lambda a=artifacts: list(a.glob("runs/*/guide.safetensors")), proc)
            if name != "ctrl-c-twice":
                proc.kill()
                continue
            proc.send_signal(signal.SIGINT)  # the first asks for a checkpoint after this step ...
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)  # ... the second aborts at once, inside the write
            proc.wait(timeout=120)
            err = proc.stderr.read()
            assert proc.returncode == 130, err
            assert "Traceback" not in err and "Interrupted." in err
    finally:
        for _, _, proc in procs.values():
            proc.kill()
            proc.wait()
            proc.stderr.close()
    folders = {name: artifacts for name, (artifacts, _, _) in procs.items()}
    folders["full-disk"] = tmp_path_factory.mktemp("full-disk") / "artifacts"
    shutil.copytree(folders["checkpoint"], folders["full-disk"])
    return folders


@pytest.mark.parametrize("point", [name for name, _ in KILL_POINTS])
def test_a_run_killed_anywhere_resumes_to_the_same_weights(point, killed, straight, data_dir):
    artifacts = killed[point]
    run_dir = run_folder(artifacts)
    assert_nothing_half_written(run_dir)
    read_checkpoint(run_dir)  # the last checkpoint that landed verifies
    result = resume(artifacts, data_dir, run_dir)
    assert result.exit_code == 0, result.output
    assert_finished_like(run_dir, straight)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    again = resume(artifacts, data_dir, run_dir)  # finished now: nothing changes
    assert again.exit_code == 0 and "nothing to do" in " ".join(again.output.split())
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_ctrl_c_twice_aborts_at_once_and_the_run_still_resumes(killed, data_dir, straight):
    artifacts = killed["ctrl-c-twice"]  # exit 130, no traceback: checked where it was stopped
    run_dir = run_folder(artifacts)
    assert read_checkpoint(run_dir).step == 0  # the aborted write left the previous checkpoint
    assert not list(run_dir.glob(".*.tmp"))  # and cleaned up after itself
    result = resume(artifacts, data_dir, run_dir)
    assert result.exit_code == 0, result.output
    assert_finished_like(run_dir, straight)


def test_a_full_disk_keeps_the_previous_checkpoint(killed, data_dir, straight, monkeypatch):
    artifacts = killed["full-disk"]  # killed inside the step-32 checkpoint write
    run_dir = run_folder(artifacts)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if not p.name.startswith(".")}
    full_disk(monkeypatch)
    result = resume(artifacts, data_dir, run_dir)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error:") and "No space left on device" in lines[-1], result.output
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if not p.name.startswith(".")}
    assert set(after) == set(before) and after["checkpoint.safetensors"] == before["checkpoint.safetensors"]
    monkeypatch.undo()  # space again: the run finishes as if nothing happened
    result = resume(artifacts, data_dir, run_dir)
    assert result.exit_code == 0, result.output
    assert_finished_like(run_dir, straight)


def test_no_environment_variable_makes_a_write_pause(tmp_path):
    """The pause above lives in the tests' launcher: the package itself never waits inside a write,
    whatever the environment says (it once read MNISTDIFF_PAUSE_IN_WRITE)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MNISTDIFF_PAUSE_IN_WRITE": "x.bin:1", "PYTHONPATH": str(root)}
    code = f"from mnist_diffusion.io import atomic_write_bytes; atomic_write_bytes({str(tmp_path / 'x.bin')!r}, b'1')"
    subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True, timeout=120)
    assert (tmp_path / "x.bin").read_bytes() == b"1"
