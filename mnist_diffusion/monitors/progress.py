"""`train --sample-every` and `train --eval-every`: the EMA weights sampled (and scored) while the
run trains, from a fixed seed, so the grids and FIDs of two steps differ only by the weights.

Both are the trainer's ``Monitor`` (training/trainer.py) and leave training exactly as it
was: they sample with their own ``torch.Generator``, put the EMA network in eval mode and back,
and restore the global random states, so a run trains the same weights, bit for bit, with them
or without them. Only rank 0 samples under torchrun. They sample without autoguidance (the guide
does not exist for the first 40% of a default run), with the run's label or cluster guidance: a FID
logged here is comparable with another FID logged here, not with `mnistdiff eval`'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from ..config import EVAL_SAMPLES, SamplingConfig
from ..data.clusters import load_clusters
from ..evaluation.scoring import feature_net, fid_of, real_reference
from ..pictures.grids import save_grid
from ..runs.loader import LoadedRun
from ..runs.store import PROGRESS, progress_grid
from ..sampling.generate import balanced_labels, count_for, generate
from ..training.monitor import Monitor
from ..training.trainer import Trainer

GRID_SAMPLES = 16  # samples in a progress grid, 4 x 4
GRID_ROW = 4


@contextlib.contextmanager
def untouched(trainer: Trainer):
    """The EMA network in eval mode for the block, then back in its mode, and the global random
    states (the CPU's, and the GPU's) as they were before it."""
    net = trainer.learner.ema.module
    was_training = net.training
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        net.eval()
        try:
            yield
        finally:
            net.train(was_training)


class _Sampler:
    """Draws n samples of a training run's EMA weights with the default sampler, from ``seed``."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._counts: torch.Tensor | None = None  # a clustered run's cluster sizes [K], read once

    def draw(self, trainer: Trainer) -> torch.Tensor:
        """[n x 1 x 28 x 28] in [0, 1] on the CPU; a conditional run's labels are i % 10."""
        cfg = trainer.cfg
        if cfg.train.clusters and self._counts is None:
            self._counts = load_clusters(trainer.run_dir, cfg.train.clusters)[1]
        run = LoadedRun(trainer.run_dir, cfg, trainer.learner.ema.module, trainer.learner.schedule, None, self._counts)
        labels = balanced_labels(self.n) if run.conditional else None
        settings = SamplingConfig(seed=self.seed, precision=cfg.train.precision)
        with untouched(trainer):
            return generate(run, self.n, settings, labels=labels)


class SampleMonitor(Monitor):
    """`train --sample-every N`: after every N-th step, a grid of GRID_SAMPLES samples into
    ``progress/samples-SSSSSSSS.png`` (S the step), the same seed every time."""

    def __init__(self, every: int, *, n: int = GRID_SAMPLES, seed: int = 0):
        self.every = every
        self.sampler = _Sampler(n, seed)
        self.last: tuple[int, torch.Tensor] | None = None  # (step, images) of the newest grid

    def after_step(self, trainer: Trainer, step: int) -> None:
        if step % self.every or not trainer.info.is_main:
            return None
        images = self.sampler.draw(trainer)
        folder = trainer.run_dir / PROGRESS
        folder.mkdir(exist_ok=True)
        save_grid(images, folder / progress_grid(step), nrow=GRID_ROW)
        self.last = (step, images)
        return None

    def seconds_per_step(self, trainer: Trainer) -> float:
        """One grid drawn (not saved) and timed, spread over the ``every`` steps it comes after:
        what a time budget leaves for the grids."""
        start = time.perf_counter()
        self.sampler.draw(trainer)
        return (time.perf_counter() - start) / self.every

    def close(self) -> None:
        pass


class FidMonitor(Monitor):
    """`train --eval-every N`: after every N-th step, the FID of ``n`` samples (the same seed every
    time) against the MNIST test set in the shipped feature net's space (``scoring.fid_of``: eval's
    feature net and reference features, loaded once), logged with its cost:
    ``{"fid", "fid_n", "fid_seconds", "fid_images_per_sec"}`` (sampling and scoring), and on the
    first call ``fid_setup_seconds``, the one-time load of the test set's features."""

    def __init__(self, every: int, data_dir: str | os.PathLike, *, n: int = EVAL_SAMPLES, seed: int = 0):
        self.every, self.data_dir = every, Path(data_dir)
        self.sampler = _Sampler(count_for(n, "--eval-samples"), seed)  # too many fail here, before training
        self._ready = False

    def after_step(self, trainer: Trainer, step: int) -> dict[str, float] | None:
        if step % self.every or not trainer.info.is_main:
            return None
        setup = self._setup(trainer)
        start = time.perf_counter()
        fid = self._score(trainer)
        seconds = time.perf_counter() - start
        record = {
            "fid": fid,
            "fid_n": self.sampler.n,
            "fid_seconds": round(seconds, 3),
            "fid_images_per_sec": round(self.sampler.n / seconds, 1),
        }
        if setup is not None:
            record["fid_setup_seconds"] = round(setup, 3)
        return record

    def seconds_per_step(self, trainer: Trainer) -> float:
        """One FID (drawn and scored, not logged) timed and spread over the ``every`` steps it
        comes after: what a time budget leaves for them. The reference features are loaded first,
        outside the timing, and kept (the first logged FID then has no setup to report)."""
        self._setup(trainer)
        start = time.perf_counter()
        self._score(trainer)
        return (time.perf_counter() - start) / self.every

    def _setup(self, trainer: Trainer) -> float | None:
        """Load the test set's reference features once per process; the seconds it took, or None."""
        if self._ready:
            return None
        start = time.perf_counter()
        with untouched(trainer):
            real_reference(self.data_dir, feature_net(trainer.device)[0])
        self._ready = True
        return time.perf_counter() - start

    def _score(self, trainer: Trainer) -> float:
        images = self.sampler.draw(trainer)
        with untouched(trainer):
            return fid_of(images, data_dir=self.data_dir, device=trainer.device)

    def close(self) -> None:
        pass
