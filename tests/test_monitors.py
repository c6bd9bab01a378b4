"""Watching a run as it trains: progress grids and FIDs at their steps, the same weights as a run
without them, the same grids and FID lines after a resume, and TensorBoard events (an extra)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS, tiny_config
from safetensors.torch import load_file
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.monitors.progress import FidMonitor, SampleMonitor
from mnist_diffusion.runs.store import append_metrics, load_config, read_metrics, resolve_run
from mnist_diffusion.training.plan import plan_resume
from mnist_diffusion.training.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[1]


def run(cfg, artifacts, data_dir, *, resume=None, **kw):
    plan = plan_resume(resolve_run(str(resume), artifacts)) if resume is not None else None
    return train(
        cfg,
        data_dir=data_dir,
        artifacts_dir=artifacts,
        run_name="t",
        device="cpu",
        progress=False,
        log=lambda m: None,
        resume=plan,
        **kw,
    )


def clustered(**train):
    """The tiny config trained on 3 pixel clusters: its progress samples draw clusters and guide by them."""
    cfg = tiny_config(clusters=3, **train)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=3))


def watchers(data_dir):
    return [SampleMonitor(3), FidMonitor(4, data_dir, n=20)]


def same_tensors(a, b) -> bool:
    a, b = load_file(a), load_file(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fids(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["fid"]) for r in read_metrics(run_dir) if "fid" in r]


def progress(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "progress").iterdir())}


def test_monitors_write_at_their_steps_and_train_the_same_weights(tmp_path, data_dir):
    cfg = tiny_config(max_steps=8, guide_at=0.25)  # the guide at step 8 of 32
    plain = run(cfg, tmp_path / "plain", data_dir).run_dir
    watched = run(cfg, tmp_path / "watched", data_dir, monitors=watchers(data_dir)).run_dir
    for name in ("model.safetensors", "guide.safetensors", "checkpoint.safetensors"):  # with the RNG state
        assert same_tensors(plain / name, watched / name), name
    assert list(progress(watched)) == ["samples-00000003.png", "samples-00000006.png"]
    rows = [r for r in read_metrics(watched) if "fid" in r]
    assert [r["step"] for r in rows] == [4, 8]
    for r in rows:
        assert r["fid"] > 0 and r["fid_n"] == 20 and r["fid_seconds"] > 0 and r["fid_images_per_sec"] > 0
    assert "fid_setup_seconds" in rows[0] and "fid_setup_seconds" not in rows[1]  # the reference loads once


def test_a_monitor_leaves_the_ema_mode_and_the_random_state_as_it_found_them(tmp_path, data_dir):
    trainer = Trainer(
        tiny_config(),
        data_dir=data_dir,
        artifacts_dir=tmp_path,
        run_name="t",
        device="cpu",
        progress=False,
        log=lambda m: None,
    )
    for training in (True, False):
        trainer.learner.ema.module.train(training)
        state = torch.get_rng_state()
        SampleMonitor(1).after_step(trainer, 1)
        assert trainer.learner.ema.module.training is training and torch.equal(torch.get_rng_state(), state)
    assert SampleMonitor(2).after_step(trainer, 3) is None  # not its step
    assert [p.name for p in (trainer.run_dir / "progress").iterdir()] == ["samples-00000001.png"]


def test_a_resumed_run_takes_the_same_grids_and_fids_as_a_straight_one(tmp_path, data_dir):
    cfg = clustered(max_steps=8)
    straight = run(cfg, tmp_path / "a", data_dir, monitors=watchers(data_dir)).run_dir
    stop = threading.Event()
    half = run(
        cfg,
        tmp_path / "b",
        data_dir,
        monitors=watchers(data_dir),
        stop=stop,
        on_step=lambda s: stop.set() if s == 5 else None,
    )
    assert half.interrupted and half.step == 5 and fids(half.run_dir) == fids(straight)[:1]
    # What a process killed after step 8 (its checkpoint still at 5) would have left: replayed on resume.
    append_metrics(half.run_dir, {"step": 8, "fid": 1.0, "fid_n": 20})
    (half.run_dir / "progress" / "samples-00000006.png").write_bytes(b"half-written")
    resumed = run(None, tmp_path / "b", data_dir, resume=half.run_dir.name, monitors=watchers(data_dir)).run_dir
    assert fids(resumed) == fids(straight) and [s for s, _ in fids(resumed)] == [4, 8]
    assert progress(resumed) == progress(straight)
    assert same_tensors(straight / "model.safetensors", resumed / "model.safetensors")


def test_a_time_budget_prices_the_monitors_and_still_trains_what_its_plan_says(tmp_path, data_dir):
    # A budget roomy enough for a FID step (4) on a loaded machine, and the run stopped at step 8 either way
    budgeted = run(
        tiny_config(epochs=3, max_steps=8), tmp_path / "a", data_dir, time_budget=15.0, monitors=watchers(data_dir)
    )
    plan = json.loads((budgeted.run_dir / "run.json").read_text())["time_budget"]
    assert plan["monitor_seconds_per_step"] > 0  # a grid and a FID, each timed once
    assert progress(budgeted.run_dir) and fids(budgeted.run_dir)  # and still taken at their steps
    plain = run(load_config(budgeted.run_dir), tmp_path / "b", data_dir).run_dir  # no budget, no monitors
    assert same_tensors(budgeted.run_dir / "model.safetensors", plain / "model.safetensors")


runner = CliRunner()


def test_train_flags_pass_the_monitors_and_tensorboard_without_its_package_is_one_line(tmp_path, data_dir, monkeypatch):
    flags = [*TINY_FLAGS, "--max-steps", "4", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path)]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    result = runner.invoke(app, ["train", *flags, "--tensorboard"])
    assert result.exit_code == 1 and not (tmp_path / "runs").exists()
    assert result.output.strip().splitlines() == [
        "Error: --tensorboard needs the tensorboard package: pip install tensorboard "
        "(in a checkout: pip install -e '.[tensorboard]')"
    ]
    result = runner.invoke(app, ["train", *flags, "--sample-every", "2", "--eval-every", "4", "--eval-samples", "10"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in (run_dir / "progress").iterdir()) == ["samples-00000002.png", "samples-00000004.png"]
    assert [(r["step"], r["fid_n"]) for r in read_metrics(run_dir) if "fid" in r] == [(4, 10)]


def test_tensorboard_gets_every_figure_and_the_grids(tmp_path, data_dir):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mnist_diffusion.monitors.tensorboard import TensorBoardMonitor

    grids = SampleMonitor(2)
    result = run(
        tiny_config(max_steps=4),
        tmp_path,
        data_dir,
        monitors=[grids, FidMonitor(4, data_dir, n=10), TensorBoardMonitor(grids)],
    )
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss", "lr", "images_per_sec", "fid", "fid_seconds"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("fid")] == [4] and [e.step for e in events.Scalars("loss")] == [4]
    assert [e.step for e in events.Images("samples")] == [2, 4]
    assert json.loads((result.run_dir / "checkpoint.json").read_text())["step"] == 4


def test_bench_monitors_prices_both_monitors(tmp_path, data_dir):
    out = tmp_path / "monitors.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_monitors.py"),
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--steps",
        "1",
        "--calls",
        "1",
        "--eval-samples",
        "10",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # a hang guard
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["result"]
    assert result["step_ms"] > 0 and result["grid"]["every"] == 500 and result["fid"]["calls_per_run"] == 0
    assert "| progress grid (16 samples) |" in out.with_suffix(".md").read_text()
