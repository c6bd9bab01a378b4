"""Shared fixtures: a tiny stand-in for MNIST on disk and a tiny training config."""

from __future__ import annotations

import os

# Tiny models gain nothing from several threads, and a busy shared machine makes OpenMP's
# spinning threads very slow: tests run single-threaded (the trainer honours OMP_NUM_THREADS).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from mnist_diffusion.data.mnist import raw_dir, write_idx_images, write_idx_labels

torch.set_num_threads(1)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's browser, one for the session's browser tests, started from the system's
    Chromium (no browser download). Requested only where pytest-playwright is installed."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images: a bright bar whose angle depends on the label, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[:28, :28] - 13.5
    images = np.zeros((n, 28, 28), np.uint8)
    for i, y in enumerate(labels):
        angle = np.pi * y / 10
        dist = np.abs(xx * np.sin(angle) - yy * np.cos(angle))
        images[i] = np.clip(255 * (dist < 2.5) * (np.hypot(xx, yy) < 11) + rng.integers(0, 30, (28, 28)), 0, 255)
    return images, labels


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding a 512-image train and 128-image test split in MNIST's IDX format."""
    root = tmp_path_factory.mktemp("data")
    raw = raw_dir(root)
    raw.mkdir(parents=True)
    for split, n, seed in (("train", 512, 0), ("t10k", 128, 1)):
        x, y = fake_digits(n, seed)
        write_idx_images(raw / f"{split}-images-idx3-ubyte", x)
        write_idx_labels(raw / f"{split}-labels-idx1-ubyte", y)
    return root


def tiny_config(**train) -> RunConfig:
    """A model and schedule small enough that a training step takes milliseconds."""
    return RunConfig(
        preset="tiny",
        model=dataclasses.replace(ModelConfig(), channels=8, channel_mult=(1, 2, 2)),
        diffusion=DiffusionConfig(schedule="cosine", timesteps=50),
        train=dataclasses.replace(TrainConfig(), **{"batch_size": 16, "warmup_steps": 4, "epochs": 1, **train}),
    )


# The tiny model of the CLI tests and of every shared tiny run.
TINY_FLAGS = ["--channels", "8", "--channel-mult", "1,2,2", "--batch-size", "16", "--timesteps", "50", "--grid", "8"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """A tiny default-preset run (40 pixel clusters, no guide yet) trained through the CLI for 4
    steps: (artifacts folder, run folder). Shared by several test files: read it, or copy it first."""
    from typer.testing import CliRunner

    from mnist_diffusion.cli import app

    artifacts = tmp_path_factory.mktemp("tiny-run")
    result = CliRunner().invoke(
        app, ["train", *TINY_FLAGS, "--max-steps", "4", "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)]
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (artifacts / "runs").iterdir()
    assert (run_dir / "model.safetensors").is_file()
    return artifacts, run_dir


@pytest.fixture(scope="session")
def run_pair(tmp_path_factory, data_dir) -> Path:
    """An artifacts folder of two tiny runs trained through the CLI for 2 steps that differ in one
    flag: 00000-a and 00001-b (--lr 0.001), for `compare`. Shared: read it, or copy it first."""
    from typer.testing import CliRunner

    from mnist_diffusion.cli import app

    artifacts = tmp_path_factory.mktemp("run-pair")
    for name, extra in (("a", []), ("b", ["--lr", "0.001"])):
        args = ["train", *TINY_FLAGS, "--max-steps", "2", "--run-name", name, *extra]
        result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)])
        assert result.exit_code == 0, result.output
    return artifacts


FIXTURE = Path(__file__).parent / "fixtures" / "mnist_small.npz"


@pytest.fixture(scope="session")
def fixture_data() -> dict[str, torch.Tensor]:
    """Real MNIST digits shipped with the tests (tests/fixtures/README.md): test_images (1,000),
    train_images (2,000), uint8 (N, 28, 28), and their labels."""
    d = np.load(FIXTURE, allow_pickle=False)
    return {k: torch.from_numpy(v) for k, v in d.items()}


def full_disk(monkeypatch) -> None:
    """From now on every crash-safe write fails as on a full disk (ENOSPC)."""
    from mnist_diffusion import io as io_module

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(io_module.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
