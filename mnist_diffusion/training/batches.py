"""The training data and its order: the whole training set as one uint8 tensor on the device,
a fresh permutation each epoch, and each optimizer step's batch with its own timesteps (at the
config's noise levels), noise and label dropout, drawn from that step's own seed, so a run
resumed at step k draws what a straight run draws at step k."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..data.clusters import load_clusters, pixel_clusters
from ..data.mnist import ensure_mnist, load_mnist
from ..diffusion import pixels_to_x0
from ..diffusion.schedule import Schedule
from ..errors import UserError
from ..runtime import DistInfo, broadcast_object
from ..seeds import derive_seed


@dataclass(frozen=True)
class Batch:
    """One training batch: ``x0`` images in [-1, 1] (B, 1, 28, 28), labels ``y`` (B,) or None,
    timesteps ``t`` (B,) and the noise ``noise`` like x0."""

    x0: torch.Tensor
    y: torch.Tensor | None
    t: torch.Tensor
    noise: torch.Tensor


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Noise and timesteps of one step come from their own seed, so resuming needs no RNG
    state beyond the step number."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed * 1_000_003, step * 1_009, rank))


def epoch_order(seed: int, epoch: int, n: int, info: DistInfo, device: torch.device) -> torch.Tensor:
    """This rank's disjoint shard of a fresh permutation of the n training images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed * 7_919, epoch)))
    shard = n // info.world_size
    return perm[info.rank * shard : (info.rank + 1) * shard].to(device)


def load_training_set(data_dir: Path, info: DistInfo, log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training set: uint8 images (N, 28, 28) and labels (N,), fetched if missing (by
    the main process; the others wait for it)."""
    if info.is_main:
        ensure_mnist(data_dir, log=log)
    if info.enabled:
        dist.barrier()
    return load_mnist(data_dir, "train")


def cluster_labels(
    images: torch.Tensor, cfg: RunConfig, info: DistInfo, log: Callable[[str], None], *, saved_in: Path | None = None
) -> torch.Tensor:
    """Each training image's k-means cluster (N,), the self-labels of a ``--clusters`` run: read
    from the run folder ``saved_in`` (a resumed run), or computed by the main process and sent to
    the others (a new run, which saves them once its folder exists)."""
    k = cfg.train.clusters
    if len(images) < k:
        raise UserError(f"{k} clusters need at least {k} training images (got {len(images)})")
    if saved_in is not None:
        assign = load_clusters(saved_in, k)[0]
        if len(assign) != len(images):
            raise UserError(
                f"run {saved_in.name} was clustered on {len(assign)} training images, the data has {len(images)}"
            )
        return assign
    assign = None
    if info.is_main:
        start = time.perf_counter()
        assign = pixel_clusters(images, k, seed=cfg.train.seed)
        log(f"self-labels: {k} k-means clusters of the pixels in {time.perf_counter() - start:.1f} s (no digit labels)")
    return broadcast_object(assign, info)


class Batches:
    """Every optimizer step's batch: the training set on ``device``, each epoch's order, and the
    step's own timesteps, noise and (for a run with labels) label dropout."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, cfg: RunConfig, info: DistInfo, device: torch.device
    ):
        self.cfg, self.info, self.device = cfg, info, device
        self.images, self.labels = images.to(device), labels.to(device)  # (N, 28, 28) uint8, (N,)
        self.schedule = Schedule(cfg.diffusion, device)  # its noise levels pick the timesteps
        self.steps_per_epoch = steps_per_epoch(len(images), cfg.train.batch_size, info)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its batch order)

    def order(self, step: int) -> torch.Tensor:
        """The batch order of step ``step``'s epoch (made once per epoch)."""
        epoch = step // self.steps_per_epoch
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.cfg.train.seed, epoch, len(self.images), self.info, self.device))
        return self._order[1]

    def batch_for(self, step: int) -> Batch:
        """The batch of optimizer step ``step`` (0-based): its place in its epoch's order."""
        return self.make_batch(self.order(step), step % self.steps_per_epoch, step)

    def make_batch(self, order: torch.Tensor, pos: int, step: int) -> Batch:
        """Batch ``pos`` of an epoch's ``order``, with the timesteps, noise and label dropout of
        optimizer step ``step`` (from that step's own seed)."""
        cfg = self.cfg
        b = cfg.train.batch_size
        idx = order[pos * b : (pos + 1) * b]
        x0 = pixels_to_x0(self.images[idx])  # (B, 1, 28, 28) in [-1, 1]
        if self.device.type == "cuda":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        g = step_generator(cfg.train.seed, step, self.info.rank, self.device)
        if cfg.diffusion.noise_levels == "uniform":
            t = torch.randint(0, cfg.diffusion.timesteps, (b,), generator=g, device=self.device)
        else:
            t = self.schedule.training_steps(torch.rand(b, generator=g, device=self.device))
        noise = torch.randn(x0.shape, generator=g, device=self.device)
        y = None
        if cfg.model.num_classes:
            y = self.labels[idx]
            drop = torch.rand(b, generator=g, device=self.device) < cfg.train.label_dropout
            y = torch.where(drop, torch.full_like(y, cfg.model.num_classes), y)  # classifier-free guidance
        return Batch(x0, y, t, noise)


def steps_per_epoch(n_images: int, batch_size: int, info: DistInfo) -> int:
    """Optimizer steps in one pass over ``n_images`` (each rank takes its share); at least 1."""
    steps = (n_images // info.world_size) // batch_size
    if steps < 1:
        raise UserError(f"batch size {batch_size} is larger than the {n_images} training images")
    return steps
