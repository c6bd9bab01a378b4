"""A trained run, loaded: its config, its EMA weights, its autoguidance guide and its cluster sizes,
every weights file checked against ``config.json``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import GuidanceKinds, RunConfig
from ..data.clusters import ClusterMatcher, load_clusters
from ..diffusion.schedule import Schedule
from ..errors import UserError
from ..nets.unet import build_model
from .store import GUIDE, WEIGHTS, load_config, load_weights_into


@dataclass
class LoadedRun:
    path: Path
    cfg: RunConfig
    model: nn.Module  # the EMA weights, in eval mode
    schedule: Schedule
    guide: nn.Module | None = None  # runs without digit labels: the early EMA weights autoguidance uses
    cluster_counts: torch.Tensor | None = None  # runs trained on pixel clusters: their sizes [K]

    @property
    def conditional(self) -> bool:
        """Conditional on digit labels (``--digit``, ``--labels``); see also ``clustered``."""
        return self.cfg.model.num_classes > 0 and not self.clustered

    @property
    def clustered(self) -> bool:
        """Unconditional, but trained on k-means clusters of the pixels as labels (data/clusters.py)."""
        return self.cfg.train.clusters > 0

    @property
    def guidance_kinds(self) -> GuidanceKinds:
        """What this run can be guided with."""
        return GuidanceKinds(auto=self.guide is not None, labels=self.conditional, clusters=self.clustered)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def cluster_matcher(self, data_dir: Path, log: Callable[[str], None] | None = None) -> ClusterMatcher:
        """What ``inpaint --match-clusters`` draws clusters with: MNIST's training images in
        ``data_dir`` (fetched if missing) and this run's clusters of them."""
        if not self.clustered:
            raise UserError(
                f"--match-clusters needs a run trained on pixel clusters (the default preset); {self.path.name} is not"
            )
        return ClusterMatcher.of_run(self.path, self.cfg.train.clusters, data_dir, log=log)


def _load_network(cfg: RunConfig, path: Path, device: torch.device) -> nn.Module:
    model = build_model(cfg.model)
    load_weights_into(model, path, cfg)
    return model.to(device).eval()


def load_run(run_dir: Path, device: torch.device, model: nn.Module | None = None) -> LoadedRun:
    """The run's config and EMA weights (and its autoguidance guide, if it has one), each weights
    file checked against ``config.json``, in eval mode on ``device``. ``model``: use this network
    (already on ``device``) instead of reading ``model.safetensors``."""
    cfg = load_config(run_dir)
    if model is None:
        if not (run_dir / WEIGHTS).is_file():
            raise UserError(
                f"run {run_dir.name} has no {WEIGHTS} yet (training not finished? "
                f"continue it with `mnistdiff train --resume {run_dir.name}`)"
            )
        model = _load_network(cfg, run_dir / WEIGHTS, device)
    guide = _load_network(cfg, run_dir / GUIDE, device) if (run_dir / GUIDE).is_file() else None
    counts = load_clusters(run_dir, cfg.train.clusters)[1] if cfg.train.clusters else None
    return LoadedRun(run_dir, cfg, model.eval(), Schedule(cfg.diffusion, device), guide, counts)


def guidance_kinds_of(run_dir: Path) -> GuidanceKinds:
    """What the run in ``run_dir`` can be guided with, from its config and files, without loading
    its weights."""
    cfg = load_config(run_dir)
    clustered = cfg.train.clusters > 0
    return GuidanceKinds(
        auto=(run_dir / GUIDE).is_file(), labels=cfg.model.num_classes > 0 and not clustered, clusters=clustered
    )
