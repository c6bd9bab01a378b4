"""Run storage and safe files (mnist_diffusion.runs.store, mnist_diffusion.io): crash-safe writes,
run numbers under concurrency, digests, weights checked against config.json, the manifest and the
metrics log."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import threading

import pytest
import torch
from conftest import full_disk, tiny_config
from safetensors.torch import save_file

from mnist_diffusion import io as io_module
from mnist_diffusion.errors import UserError
from mnist_diffusion.io import atomic_open, atomic_write_bytes, load_tensors, save_tensors
from mnist_diffusion.nets.unet import build_model
from mnist_diffusion.runs.folder import reserve_run
from mnist_diffusion.runs.store import (
    append_metrics,
    keep_metrics_until,
    load_weights_into,
    read_metrics,
    verify_manifest,
    weights_metadata,
    write_manifest,
)


def test_atomic_open_leaves_the_old_file_on_a_crash(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old weights")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("power cut")
    assert target.read_bytes() == b"old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_open_gives_new_files_the_umask_permissions_without_touching_it(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("atomic_open must not read or set the umask"))
        monkeypatch.delattr(os, "fchmod", raising=False)  # as on Windows before Python 3.13
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640


def test_atomic_open_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(io_module, "fsync_dir", lambda folder: synced.append((folder, (tmp_path / "x").exists())))
    atomic_write_bytes(tmp_path / "x", b"1")
    assert synced == [(tmp_path, True)]


def test_a_full_disk_leaves_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.safetensors"
    target.write_bytes(b"the last good checkpoint")
    full_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"the last good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_run_numbers_are_unique_when_runs_start_together(tmp_path):
    barrier, made = threading.Barrier(8), []

    def start(i):
        barrier.wait()
        made.append(reserve_run(tmp_path, f"name{i % 3}").publish())

    threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name[:5] for p in made) == [f"{i:05d}" for i in range(8)]
    for p in made:  # a number is never reused, even once its folder is gone
        shutil.rmtree(p)
    assert reserve_run(tmp_path, "next").final.name == "00008-next"


def test_four_train_processes_started_together_get_four_numbers(tmp_path, data_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "--channels",
        "8",
        "--channel-mult",
        "1,2,2",
        "--batch-size",
        "16",
        "--timesteps",
        "10",
        "--clusters",
        "0",
        "--max-steps",
        "1",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(tmp_path),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mnist_diffusion", "train", *common, "--run-name", f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)  # a hang guard, not a speed limit
        assert p.returncode == 0, err[-2000:]
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [n[:5] for n in names] == ["00000", "00001", "00002", "00003"], names
    assert sorted(n[6:] for n in names) == ["p0", "p1", "p2", "p3"]


def test_a_flipped_bit_anywhere_in_a_safetensors_file_is_caught(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(3, 3)}, {"note": "x"})
    assert torch.equal(load_tensors(path)["a"], torch.arange(64, dtype=torch.float32))
    data = path.read_bytes()
    caught = 0
    for offset in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            load_tensors(path)
        except UserError:
            caught += 1
    # a flip inside JSON whitespace or padding changes nothing that is read; every other is refused
    assert caught >= 0.9 * len(range(0, len(data), 7)), caught


def test_files_without_a_digest_still_load(tmp_path):
    save_file({"samples": torch.zeros(2, 1, 28, 28)}, tmp_path / "foreign.safetensors")  # another tool's file
    assert load_tensors(tmp_path / "foreign.safetensors")["samples"].shape == (2, 1, 28, 28)


def test_weights_saved_for_another_config_are_refused(tmp_path):
    cfg = tiny_config()
    eps = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, prediction="eps"))
    save_tensors(tmp_path / "m.safetensors", build_model(cfg.model).state_dict(), weights_metadata(eps))
    with pytest.raises(UserError, match="saved for diffusion.prediction = 'eps', the config says 'v'"):
        load_weights_into(build_model(cfg.model), tmp_path / "m.safetensors", cfg)
    save_file(build_model(cfg.model).state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(UserError, match="no config in its metadata"):
        load_weights_into(build_model(cfg.model), tmp_path / "bare.safetensors", cfg)
    save_tensors(tmp_path / "ok.safetensors", build_model(cfg.model).state_dict(), weights_metadata(cfg))
    load_weights_into(build_model(cfg.model), tmp_path / "ok.safetensors", cfg)


def test_manifest_lists_every_file_and_tells_what_changed(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    write_manifest(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"a.txt", "b.txt"} and manifest["mnist_diffusion_version"]
    assert verify_manifest(tmp_path) == {"a.txt": "ok", "b.txt": "ok"}
    (tmp_path / "a.txt").write_text("z")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "c.txt").write_text("new")
    assert verify_manifest(tmp_path) == {"a.txt": "changed", "b.txt": "missing", "c.txt": "unlisted"}
    (tmp_path / "manifest.json").write_text("[1, 2")
    with pytest.raises(UserError, match="manifest.json cannot be read"):
        verify_manifest(tmp_path)


def test_metrics_keep_each_step_once_after_a_replay(tmp_path):
    for step in (50, 100, 150):
        append_metrics(tmp_path, {"step": step, "loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 200, "lo')  # a line cut short by a crash
    keep_metrics_until(tmp_path, 100)  # the checkpoint the run resumes from
    append_metrics(tmp_path, {"step": 150, "loss": 0.5})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(50, 1.0), (100, 1.0), (150, 0.5)]
