"""Load a trained run and draw samples from it: the core of `mnistdiff sample`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .artifacts import GUIDE, WEIGHTS, load_config, load_weights_into
from .clusters import draw_clusters, load_clusters
from .config import RunConfig
from .errors import UserError
from .model import build_model
from .runtime import use_bf16
from .samplers import (
    DEFAULT_CLUSTER_GUIDANCE,
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    SAMPLERS,
    SPACING_RANGE,
    Denoiser,
    sample,
)
from .schedule import Schedule

MAX_GUIDANCE = 20.0  # the largest --guidance accepted


@dataclass
class LoadedRun:
    path: Path
    cfg: RunConfig
    model: nn.Module
    schedule: Schedule
    guide: nn.Module | None = None  # unconditional runs: the early EMA weights autoguidance uses
    cluster_counts: torch.Tensor | None = None  # runs trained on pixel clusters: their sizes [K]

    @property
    def conditional(self) -> bool:
        """Conditional on digit labels (``--digit``, ``--labels``); see also ``clustered``."""
        return self.cfg.model.num_classes > 0 and not self.clustered

    @property
    def clustered(self) -> bool:
        """Unconditional, but trained on k-means clusters of the pixels as labels (clusters.py)."""
        return self.cfg.train.clusters > 0

    @property
    def guidance_kind(self) -> str | None:
        """What ``--guidance`` is: "classifier-free" (on the digits), "autoguidance" (by the guide;
        a clustered run's guide gets the same cluster), "cluster" (classifier-free on the clusters,
        for a clustered run without a guide) or None."""
        if self.conditional:
            return "classifier-free"
        if self.guide is not None:
            return "autoguidance"
        return "cluster" if self.clustered else None


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


def _check_scale(flag: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= MAX_GUIDANCE):
        raise UserError(f"{flag} must be between 0 and {MAX_GUIDANCE:g} (got {value})")


def resolve_guidance(run: LoadedRun, guidance: float | None) -> float:
    """The guidance scale for ``--guidance``: DEFAULT_GUIDANCE if not given, and 1 (none) for a
    run with nothing to guide with; asking such a run for guidance is a UserError."""
    _check_scale("--guidance", guidance)
    if run.guidance_kind is None:
        if guidance is not None and guidance != 1.0:
            raise UserError(
                f"run {run.path.name} has no guide ({GUIDE}): it was trained unconditionally before autoguidance "
                "or with guide_at 0; sample it without --guidance"
            )
        return 1.0
    return DEFAULT_GUIDANCE if guidance is None else guidance


def resolve_cluster_guidance(run: LoadedRun, cluster_guidance: float | None) -> float:
    """The scale s of ``--cluster-guidance``, classifier-free guidance on the clusters on top of
    autoguidance: DEFAULT_CLUSTER_GUIDANCE if not given for a clustered run with a guide, 1 (none)
    for any other run, where asking for it is a UserError."""
    _check_scale("--cluster-guidance", cluster_guidance)
    if not (run.clustered and run.guide is not None):
        if cluster_guidance is not None and cluster_guidance != 1.0:
            raise UserError(
                f"--cluster-guidance needs a run trained on pixel clusters with a guide ({GUIDE}); "
                f"run {run.path.name} has {'no guide' if run.clustered else 'no clusters'}: use --guidance"
            )
        return 1.0
    return DEFAULT_CLUSTER_GUIDANCE if cluster_guidance is None else cluster_guidance


def parse_labels(digit: int | None, labels: str | None, n: int, conditional: bool) -> torch.Tensor | None:
    """The class labels for ``n`` samples from ``--digit`` / ``--labels`` (comma-separated,
    repeated to length n); a conditional run with neither gets rows of 0..9."""
    if (digit is not None or labels) and not conditional:
        raise UserError("--digit/--labels need a class-conditional run (train it with --conditional)")
    if not conditional:
        return None
    if digit is not None and labels:
        raise UserError("give --digit or --labels, not both")
    if digit is not None:
        values = [digit]
    elif labels:
        try:
            values = [int(v) for v in labels.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--labels must be comma-separated digits 0-9 (got {labels!r})") from None
    else:
        values = list(range(10))
    if not values or any(not 0 <= v <= 9 for v in values):
        raise UserError("labels must be digits 0-9")
    if labels or digit is not None:
        seq = [values[i % len(values)] for i in range(n)]
    else:  # ceil(n / 10) of each digit, in order: a row per digit (see default_conditional_nrow)
        per_digit = -(-n // 10)
        seq = [min(i // per_digit, 9) for i in range(n)]
    return torch.tensor(seq, dtype=torch.long)


def default_conditional_nrow(n: int) -> int:
    """Tiles per row of a conditional run's default grid: one row per digit 0-9, or for n <= 10
    (one of each digit at most) a single row 0, 1, ..., n-1."""
    per_digit = -(-n // 10)
    return per_digit if per_digit > 1 else n


def check_sampler(
    sampler: str, steps: int | None, eta: float, num_timesteps: int, spacing: float | None = None
) -> None:
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)} (got {sampler!r})")
    if steps is not None and not 1 <= steps <= num_timesteps:
        raise UserError(f"--steps must be between 1 and the run's {num_timesteps} timesteps (got {steps})")
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"--eta must be between 0 and 1 (got {eta})")
    low, high = SPACING_RANGE
    if spacing is not None and not low <= spacing <= high:
        raise UserError(f"--spacing must be between {low:g} and {high:g} (got {spacing})")


def generate(
    run: LoadedRun,
    n: int,
    *,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    eta: float = 0.0,
    spacing: float | None = None,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    guidance: float | None = None,
    cluster_guidance: float | None = None,
    precision: str = "auto",
    batch_size: int = 500,
    progress: bool = False,
    callback=None,
) -> torch.Tensor:
    """``n`` samples as [n x 1 x 28 x 28] in [0, 1] on the CPU. Batches are drawn in order from
    one generator seeded with ``seed``, so the same seed and flags give the same images.
    A run trained on pixel clusters draws each sample's cluster from their training frequencies
    (first, from the same generator). ``guidance`` None: :data:`DEFAULT_GUIDANCE` if the run can
    be guided (see :func:`resolve_guidance`), ``cluster_guidance`` likewise
    (:func:`resolve_cluster_guidance`).
    ``precision`` "auto" runs the network in bf16 where the chip has bf16 units, as training does.
    ``callback`` (see :data:`samplers.StepCallback`) is called after every step of the first batch."""
    if n < 1:
        raise UserError(f"number of samples must be at least 1 (got {n})")
    check_sampler(sampler, steps, eta, run.schedule.num_timesteps, spacing)
    guidance = resolve_guidance(run, guidance)
    cluster_guidance = resolve_cluster_guidance(run, cluster_guidance)
    device = next(run.model.parameters()).device
    bf16 = use_bf16(precision, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    if run.clustered and labels is None:
        labels = draw_clusters(run.cluster_counts.to(device), n, generator)
    out = []
    for start in range(0, n, batch_size):  # the callback sees the first batch only
        b = min(batch_size, n - start)
        batch_labels = labels[start : start + b].to(device) if labels is not None else None
        denoiser = Denoiser(
            run.model,
            run.schedule,
            run.cfg.diffusion.prediction,
            batch_labels,
            guidance,
            guide=run.guide,
            bf16=bf16,
            label_guidance=cluster_guidance,
        )
        x = sample(
            denoiser,
            (b, run.cfg.model.in_channels, 28, 28),
            sampler=sampler,
            steps=steps,
            eta=eta,
            spacing=spacing,
            generator=generator,
            device=device,
            progress=progress,
            callback=callback if start == 0 else None,
        )
        out.append(((x + 1) / 2).clamp(0, 1).cpu())  # [-1, 1] -> [0, 1]
    return torch.cat(out)
