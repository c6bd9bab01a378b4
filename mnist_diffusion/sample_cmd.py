"""The core of `mnistdiff sample`: draw, then write the grid, the raw tensor and a trajectory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .artifacts import save_tensors
from .errors import UserError
from .generate import LoadedRun, default_conditional_nrow, generate, load_run, parse_labels
from .images import save_grid, trajectory_figure
from .samplers import model_evaluations

if TYPE_CHECKING:
    from .train import Trainer

TRAJECTORY_ROWS = 4  # samples shown in a trajectory picture
TRAJECTORY_FRAMES = 10  # moments shown, evenly spaced over the sampler's steps
END_GRID = 64  # samples in the grid drawn at the end of training, 8 x 8
END_GRID_CONDITIONAL = 80  # conditional runs: a row of 8 for each digit 0-9


def sample_to_files(
    run: LoadedRun,
    n: int,
    output: Path,
    *,
    sampler: str,
    steps: int | None,
    eta: float,
    seed: int,
    spacing: float | None = None,
    labels: torch.Tensor | None,
    guidance: float | None,
    cluster_guidance: float | None = None,
    precision: str = "auto",
    nrow: int,
    scale: int,
    save_tensor: Path | None = None,
    trajectory: Path | None = None,
    batch_size: int = 500,
    progress: bool = True,
) -> torch.Tensor:
    """Draw ``n`` samples and write them as a PNG grid (and optionally as safetensors and as a
    trajectory picture). Returns the samples, [n x 1 x 28 x 28] in [0, 1]."""
    for path in (output, save_tensor, trajectory):
        if path is not None and path.parent and not path.parent.is_dir():
            raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    frames: list[torch.Tensor] = []
    frame_labels: list[str] = []
    callback = None
    if trajectory is not None:
        total = model_evaluations(sampler, steps, run.schedule.num_timesteps)
        keep = {round(i * (total - 1) / (TRAJECTORY_FRAMES - 1)) for i in range(TRAJECTORY_FRAMES)}

        def callback(i, t, x, x0):  # called for the first batch only
            if i in keep:
                frames.append(((x[:TRAJECTORY_ROWS] + 1) / 2).clamp(0, 1).cpu())
                frame_labels.append(f"step {i + 1}\nt={t}")

    images = generate(
        run,
        n,
        sampler=sampler,
        steps=steps,
        eta=eta,
        spacing=spacing,
        seed=seed,
        labels=labels,
        guidance=guidance,
        cluster_guidance=cluster_guidance,
        precision=precision,
        batch_size=batch_size,
        progress=progress,
        callback=callback,
    )
    save_grid(images, output, nrow=nrow, scale=scale)
    if save_tensor is not None:
        save_tensors(save_tensor, {"samples": images}, {"run": run.path.name, "sampler": sampler, "seed": str(seed)})
    if trajectory is not None:
        trajectory_figure(torch.stack(frames), frame_labels, trajectory)
    return images


def end_of_run_grid(n: int | None = None) -> Callable[[Trainer], None]:
    """The trainer's ``on_finish`` hook that draws ``samples.png``: ``n`` samples (default 64; 80,
    a row of 8 per digit, for a conditional run) of the final EMA weights, with the default sampler
    and guidance, seeded with the run's seed."""

    def draw(trainer: Trainer) -> None:
        run = load_run(trainer.run_dir, trainer.device, model=trainer.ema.module)  # with the guide, if any
        count = n or (END_GRID_CONDITIONAL if run.conditional else END_GRID)
        labels = parse_labels(None, None, count, run.conditional)
        images = generate(run, count, seed=trainer.cfg.train.seed, labels=labels,
                          precision=trainer.cfg.train.precision, progress=trainer.progress)  # fmt: skip
        nrow = default_conditional_nrow(count) if run.conditional else min(count, 8)
        save_grid(images, trainer.run_dir / "samples.png", nrow=nrow, scale=2)

    return draw
