"""Samples on disk: the core of `mnistdiff sample` (a PNG grid, the raw tensor, a trajectory
picture or animation, SDEdit from a drawing) and the grid drawn at the end of training."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import SDEDIT_STRENGTH, SamplingConfig
from ..diffusion import x0_to_unit
from ..diffusion.samplers import StepCallback
from ..io import check_output, save_tensors
from ..pictures.animation import save_gif
from ..pictures.figures import trajectory_figure
from ..pictures.grids import save_grid
from ..runs.loader import LoadedRun, load_run
from .editing import sdedit, sdedit_steps
from .generate import count_for, default_conditional_nrow, generate, parse_labels, resolve_for

TRAJECTORY_ROWS = 4  # samples shown in a trajectory picture
TRAJECTORY_FRAMES = 10  # moments shown, evenly spaced over the sampler's steps
END_GRID = 64  # samples in the grid drawn at the end of training, 8 x 8
END_GRID_CONDITIONAL = 80  # conditional runs: a row of 8 for each digit 0-9
# What the files written may be named (check_output): a PNG, a PNG or an animated GIF, safetensors.
PNG, PICTURE, TENSORS = (".png",), (".png", ".gif"), (".safetensors",)
MADE_WITH = "mnistdiff"  # the text key of a picture that says how it was made (:func:`made_with`)


def made_with(run: LoadedRun, settings: SamplingConfig | dict[str, Any], **own: Any) -> dict[str, str]:
    """What a picture of ``run`` carries of how it was made (the ``metadata`` of
    :func:`~mnist_diffusion.pictures.grids.save_grid`): under the key ``mnistdiff``, JSON of the
    run's name, the resolved sampling ``settings`` and the command's own settings ``own``. The
    same settings give the same text."""
    sampling = settings.to_dict() if isinstance(settings, SamplingConfig) else settings
    return {MADE_WITH: json.dumps({"run": run.path.name, "sampling": sampling, **own}, sort_keys=True)}


def sample_to_files(
    run: LoadedRun,
    n: int,
    output: Path,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    labels: torch.Tensor | None = None,
    nrow: int | None = None,
    scale: int = 2,
    save_tensor: Path | None = None,
    trajectory: Path | None = None,
    progress: bool = True,
    init: torch.Tensor | None = None,
    strength: float = SDEDIT_STRENGTH,
) -> torch.Tensor:
    """Draw ``n`` samples and write them as a PNG grid (and optionally as safetensors, with the
    resolved settings in its metadata, and as a trajectory of the first samples: a picture, or
    an animated GIF if its name ends in ``.gif``). With ``init``, a drawing [1 x 28 x 28] in
    [0, 1], the samples are SDEdits of it at ``strength`` (:func:`sdedit`). Each picture says how
    it was made (:func:`made_with`): the settings, the ``labels`` and the SDEdit ``strength``.
    Returns the samples, [n x 1 x 28 x 28] in [0, 1]."""
    check_output(output, PNG, "-o")
    check_output(save_tensor, TENSORS, "--save-tensor")
    check_output(trajectory, PICTURE, "--trajectory")
    count_for(n, "-n", scale=scale)
    settings = resolve_for(run, sampling)
    frames: list[torch.Tensor] = []
    frame_labels: list[str] = []
    callback = None
    if trajectory is not None:
        T = run.schedule.num_timesteps
        total = settings.evaluations(T) if init is None else sdedit_steps(settings, T, strength)
        callback = _trajectory_recorder(total, frames, frame_labels)
    if init is None:
        images = generate(run, n, settings, labels=labels, progress=progress, callback=callback)
    else:
        images = sdedit(run, init, n, settings, strength=strength, labels=labels, progress=progress, callback=callback)
    sdedit_record = {"sdedit": {"strength": strength}} if init is not None else {}
    picture = made_with(run, settings, labels=labels.tolist() if labels is not None else None, **sdedit_record)
    save_grid(images, output, nrow=nrow, scale=scale, metadata=picture)
    if save_tensor is not None:
        metadata = {"run": run.path.name, "sampling": json.dumps(settings.to_dict(), sort_keys=True)}
        if init is not None:
            metadata["sdedit"] = json.dumps(sdedit_record["sdedit"])
        save_tensors(save_tensor, {"samples": images}, metadata)
    if trajectory is not None and trajectory.suffix.lower() == ".gif":
        save_gif(torch.stack(frames), trajectory, nrow=len(frames[0]), scale=scale, metadata=picture)
    elif trajectory is not None:
        trajectory_figure(torch.stack(frames), frame_labels, trajectory, metadata=picture)
    return images


def _trajectory_recorder(total: int, frames: list[torch.Tensor], frame_labels: list[str]) -> StepCallback:
    """A sampler callback that appends TRAJECTORY_FRAMES moments, evenly spaced over the ``total``
    steps, of the first TRAJECTORY_ROWS samples to ``frames`` (each [rows x 1 x 28 x 28] in [0, 1])
    and their captions to ``frame_labels``."""
    keep = {round(i * (total - 1) / (TRAJECTORY_FRAMES - 1)) for i in range(TRAJECTORY_FRAMES)}

    def callback(i, t, x, x0):  # called for the first batch only
        if i in keep:
            frames.append(x0_to_unit(x[:TRAJECTORY_ROWS]).cpu())
            frame_labels.append(f"step {i + 1}\nt={t}")

    return callback


def trajectory(run: LoadedRun, sampling: SamplingConfig = SamplingConfig()) -> tuple[torch.Tensor, list[str]]:
    """The denoising trajectory of TRAJECTORY_ROWS samples (for a conditional run, the digits 0, 1,
    2, ...): frames [K x N x 1 x 28 x 28] in [0, 1] and a caption per moment, for
    :func:`~mnist_diffusion.pictures.figures.trajectory_plot`."""
    settings = resolve_for(run, sampling)
    frames: list[torch.Tensor] = []
    frame_labels: list[str] = []
    labels = parse_labels(None, None, TRAJECTORY_ROWS, run.conditional)
    generate(
        run,
        TRAJECTORY_ROWS,
        settings,
        labels=labels,
        callback=_trajectory_recorder(settings.evaluations(run.schedule.num_timesteps), frames, frame_labels),
    )
    return torch.stack(frames), frame_labels


def end_of_run_grid(n: int | None = None) -> Callable[[Path, nn.Module, bool], None]:
    """The trainer's ``on_finish`` hook that draws ``samples.png`` into the run folder: ``n``
    samples (default 64; 80, a row of 8 per digit, for a conditional run) of the final EMA weights,
    with the default sampling settings and the run's seed. A count too large for memory is a
    one-line UserError here, before training."""
    if n is not None:
        count_for(n, "--grid", scale=2)

    def draw(run_dir: Path, model: nn.Module, progress: bool) -> None:
        run = load_run(run_dir, next(model.parameters()).device, model=model)  # with the guide, if any
        count = n or (END_GRID_CONDITIONAL if run.conditional else END_GRID)
        labels = parse_labels(None, None, count, run.conditional)
        settings = dataclasses.replace(SamplingConfig(), seed=run.cfg.train.seed, precision=run.cfg.train.precision)
        images = generate(run, count, settings, labels=labels, progress=progress)
        nrow = default_conditional_nrow(count) if run.conditional else min(count, 8)
        save_grid(images, run_dir / "samples.png", nrow=nrow, scale=2)

    return draw
