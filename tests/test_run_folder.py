"""A run folder has one writer and appears only whole: `train --steps` reaches the plan, a failed
start leaves the artifacts folder as it was, a second writer is refused, a finished run stays
finished, and Ctrl-C during the end grid does what it says."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, tiny_config
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.runs import lock
from mnist_diffusion.runs.folder import reserve_run
from mnist_diffusion.runs.store import is_finished, load_config, read_metrics
from mnist_diffusion.training.monitor import Monitor
from mnist_diffusion.training.trainer import train

runner = CliRunner()
TINY = [*TINY_FLAGS[:-2], "--grid", "4"]  # TINY_FLAGS ends with its --grid


def invoke(args: list[str], artifacts: Path, data_dir: Path):
    return runner.invoke(app, [*args, "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)])


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too), with each file's sha256."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert lines and lines[-1].startswith("Error:"), result.output
    return lines[-1]


# ----------------------------------------------------------------------------- --steps


def test_train_steps_sets_the_plan_of_a_new_run(tmp_path, data_dir):
    result = invoke(["train", *TINY, "--steps", "6"], tmp_path, data_dir)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_config(run_dir).train.steps == 6
    trained = [r["step"] for r in read_metrics(run_dir) if r.get("done")]
    assert trained == [6]  # 6 steps, not the epochs' 32


def test_resume_with_more_steps_is_a_child_run_and_the_parent_is_untouched(tmp_path, data_dir):
    assert invoke(["train", *TINY, "--steps", "4"], tmp_path, data_dir).exit_code == 0
    (parent,) = (tmp_path / "runs").iterdir()
    before = tree(parent)
    same = invoke(["train", "--resume", parent.name, "--steps", "4"], tmp_path, data_dir)
    assert same.exit_code == 0 and "nothing to do" in " ".join(same.output.split()), same.output
    longer = invoke(["train", "--resume", parent.name, "--steps", "8", "--grid", "4"], tmp_path, data_dir)
    assert longer.exit_code == 0, longer.output
    child = sorted((tmp_path / "runs").iterdir())[-1]
    assert child != parent and tree(parent) == before
    assert load_config(child).train.steps == 8
    assert json.loads((child / "run.json").read_text())["parent"] == {"run": parent.name, "step": 4}
    assert [r["step"] for r in read_metrics(child) if r.get("done")] == [8]


# ----------------------------------------------------------------------------- failed starts


FAILED_STARTS = {
    "more clusters than images": ["--clusters", "1000"],
    "a batch larger than the data": ["--batch-size", "100000", "--clusters", "0"],
    "an unknown schedule": ["--schedule", "square"],
}


@pytest.mark.parametrize("with_a_run", [False, True], ids=["empty", "with-a-run"])
@pytest.mark.parametrize("name", list(FAILED_STARTS))
def test_a_failed_start_leaves_the_artifacts_folder_as_it_was(name, with_a_run, tmp_path, data_dir, tiny_run):
    artifacts = tmp_path / "artifacts"
    if with_a_run:
        (artifacts / "runs").mkdir(parents=True)
        tiny_artifacts, tiny_dir = tiny_run
        (artifacts / "latest").write_text(tiny_dir.name + "\n")
        (artifacts / "runs" / tiny_dir.name).mkdir()
        (artifacts / "runs" / tiny_dir.name / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    before = tree(artifacts)
    one_line_error(invoke(["train", *TINY, *FAILED_STARTS[name]], artifacts, data_dir))
    assert tree(artifacts) == before


def test_a_failure_before_the_first_checkpoint_removes_the_half_made_run(tmp_path, data_dir):
    """A time budget measures its monitors before the first checkpoint: one that fails there
    leaves no run folder, no number and no `latest` behind."""

    class Broken(Monitor):
        def seconds_per_step(self, trainer):
            assert (trainer.run_dir / "config.json").is_file()  # the hidden folder was being filled
            raise RuntimeError("the monitor broke")

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    before = tree(artifacts)
    with pytest.raises(RuntimeError, match="the monitor broke"):
        train(
            tiny_config(),
            data_dir=data_dir,
            artifacts_dir=artifacts,
            run_name="t",
            device="cpu",
            progress=False,
            log=lambda m: None,
            time_budget=30.0,
            monitors=[Broken()],
        )
    assert tree(artifacts) == before


def test_a_run_folder_being_set_up_is_hidden_and_an_abandoned_one_is_cleared(tmp_path):
    new = reserve_run(tmp_path, "a")
    assert new.path.name.startswith(".") and not new.final.exists()
    assert runner.invoke(app, ["sample", "--run", "a", "--artifacts-dir", str(tmp_path)]).exit_code == 1
    lock.release(new.path)  # as if its process had been killed: the lock is free
    other = reserve_run(tmp_path, "b")
    assert not new.path.exists() and other.final.name == "00001-b"  # its number stays taken
    other.discard()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == []


# ----------------------------------------------------------------------------- one writer


def start_training(artifacts: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mnist_diffusion",
        "train",
        *TINY,
        *extra,
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(artifacts),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(artifacts: Path, proc: subprocess.Popen) -> Path:
    deadline = time.time() + 300  # a hang guard, not a speed limit
    while not list(artifacts.glob("runs/[0-9]*/checkpoint.safetensors")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    (run_dir,) = (artifacts / "runs").glob("[0-9]*")
    return run_dir


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken(tmp_path, data_dir):
    artifacts = tmp_path / "artifacts"
    proc = start_training(artifacts, data_dir, "--epochs", "1000")  # trains until killed
    try:
        run_dir = wait_for_checkpoint(artifacts, proc)
        before = tree(run_dir / "..")
        listed = runner.invoke(app, ["runs", "--artifacts-dir", str(artifacts)], terminal_width=200)
        assert listed.exit_code == 0, listed.output
        row = next(line for line in listed.output.splitlines() if run_dir.name in line)
        assert row.split()[-1] == "training", listed.output  # not a run to resume now
        line = one_line_error(invoke(["train", "--resume", run_dir.name], artifacts, data_dir))
        assert f"process {proc.pid}" in line
        line = one_line_error(invoke(["train", "--resume", run_dir.name, "--max-steps", "3"], artifacts, data_dir))
        assert f"process {proc.pid}" in line  # a child reads its parent's state: not while it is written
        assert set(tree(run_dir / "..")) <= set(before) | {str(Path(run_dir.name) / p) for p in ("metrics.jsonl",)}
    finally:
        proc.kill()  # SIGKILL: nothing is released by the process itself
        proc.wait()
        proc.stderr.close()
    listed = runner.invoke(app, ["runs", "--artifacts-dir", str(artifacts)], terminal_width=200)
    row = next(line for line in listed.output.splitlines() if run_dir.name in line)
    assert row.split()[-1] in {"started", "resumable"}, listed.output  # its lock went with it
    step = json.loads((run_dir / "checkpoint.json").read_text())["step"]
    result = invoke(["train", "--resume", run_dir.name, "--max-steps", str(step + 2)], artifacts, data_dir)
    assert result.exit_code == 0, result.output
    child = sorted((artifacts / "runs").iterdir())[-1]
    assert child != run_dir and is_finished(child)


def test_the_lock_is_reentrant_in_one_process_and_freed_by_its_last_release(tmp_path):
    with lock.run_lock(tmp_path):
        with lock.run_lock(tmp_path):
            pass
        assert not lock.is_locked(tmp_path)  # held by this very process: not "another" writer
    code = f"from mnist_diffusion.runs import lock; from pathlib import Path; lock.acquire(Path({str(tmp_path)!r}))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ----------------------------------------------------------------------------- finished runs


@pytest.fixture
def finished(tmp_path, data_dir) -> Path:
    result = invoke(["train", *TINY, "--max-steps", "3"], tmp_path, data_dir)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_a_finished_run_without_its_manifest_is_still_finished(finished, tmp_path, data_dir):
    (finished / "manifest.json").unlink()
    before = tree(finished)
    result = invoke(["train", "--resume", finished.name], tmp_path, data_dir)
    assert result.exit_code == 0 and "nothing to do" in " ".join(result.output.split()), result.output
    assert tree(finished) == before  # samples.png and metrics.jsonl are not drawn or written again


def test_a_finished_run_whose_weights_are_gone_is_refused(finished, tmp_path, data_dir):
    (finished / "model.safetensors").unlink()
    before = tree(finished)
    line = one_line_error(invoke(["train", "--resume", finished.name], tmp_path, data_dir))
    assert "model.safetensors" in line and "finished" in line
    assert tree(finished) == before


# ----------------------------------------------------------------------------- Ctrl-C at the end


def test_ctrl_c_while_drawing_the_end_grid_stops_at_once(tmp_path, data_dir, monkeypatch):
    """The first Ctrl-C once every step is trained does not promise a checkpoint after a step
    that will never come: it stops at once, says how to finish, and `--resume` finishes."""
    import mnist_diffusion.sampling.outputs as outputs

    real = outputs.end_of_run_grid

    def slow_grid(n=None):
        def draw(run_dir, model, progress):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # interrupted long before this ends

        return draw

    monkeypatch.setattr(outputs, "end_of_run_grid", slow_grid)
    start = time.perf_counter()
    result = invoke(["train", *TINY, "--max-steps", "3"], tmp_path, data_dir)
    assert time.perf_counter() - start < 25
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert "--resume" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not is_finished(run_dir)
    monkeypatch.setattr(outputs, "end_of_run_grid", real)
    again = invoke(["train", "--resume", run_dir.name, "--grid", "4"], tmp_path, data_dir)
    assert again.exit_code == 0, again.output
    assert is_finished(run_dir) and (run_dir / "samples.png").is_file()
