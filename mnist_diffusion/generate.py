"""Load a trained run and draw samples from it: the core of `mnistdiff sample`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .artifacts import WEIGHTS, load_config, load_weights_into
from .config import RunConfig
from .errors import UserError
from .model import build_model
from .samplers import DEFAULT_SAMPLER, SAMPLERS, SPACING_RANGE, Denoiser, sample
from .schedule import Schedule


@dataclass
class LoadedRun:
    path: Path
    cfg: RunConfig
    model: nn.Module
    schedule: Schedule

    @property
    def conditional(self) -> bool:
        return self.cfg.model.num_classes > 0


def load_run(run_dir: Path, device: torch.device) -> LoadedRun:
    """The run's config and EMA weights, checked against each other, in eval mode on ``device``."""
    cfg = load_config(run_dir)
    if not (run_dir / WEIGHTS).is_file():
        raise UserError(
            f"run {run_dir.name} has no {WEIGHTS} yet (training not finished? "
            f"continue it with `mnistdiff train --resume {run_dir.name}`)"
        )
    model = build_model(cfg.model)
    load_weights_into(model, run_dir / WEIGHTS)
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, model, Schedule(cfg.diffusion, device))


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
    guidance: float = 1.0,
    batch_size: int = 500,
    progress: bool = False,
    callback=None,
) -> torch.Tensor:
    """``n`` samples as [n x 1 x 28 x 28] in [0, 1] on the CPU. Batches are drawn in order from
    one generator seeded with ``seed``, so the same seed and flags give the same images."""
    if n < 1:
        raise UserError(f"number of samples must be at least 1 (got {n})")
    check_sampler(sampler, steps, eta, run.schedule.num_timesteps, spacing)
    device = next(run.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        batch_labels = labels[start : start + b].to(device) if labels is not None else None
        denoiser = Denoiser(run.model, run.schedule, run.cfg.diffusion.prediction, batch_labels, guidance)
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
            callback=callback,
        )
        out.append(((x + 1) / 2).clamp(0, 1).cpu())  # [-1, 1] -> [0, 1]
    return torch.cat(out)
