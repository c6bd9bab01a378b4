"""Edits on disk: the cores of `mnistdiff inpaint`, `interpolate` and `invert`, which run the
functions of :mod:`.editing` and write their pictures (and tensors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import INPAINT_JUMPS, INTERPOLATE_FRAMES, SamplingConfig, inpaint_resample
from ..data.clusters import ClusterMatcher
from ..io import check_output, save_tensors
from ..pictures.animation import save_gif
from ..pictures.grids import save_grid
from ..runs.loader import LoadedRun
from .editing import (
    Endpoint,
    inpaint,
    inpaint_settings,
    interpolate,
    interpolate_settings,
    invert,
    invert_settings,
    reconstruct,
    reconstruction_error,
)
from .generate import count_for
from .outputs import PICTURE, PNG, TENSORS, made_with

HOLE = 0.5  # the grey that shows the missing pixels of a masked input


def inpaint_to_files(
    run: LoadedRun,
    images: torch.Tensor,
    missing: torch.Tensor,
    output: Path,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    n: int = 4,
    digit: int | None = None,
    jumps: int = INPAINT_JUMPS,
    resample: int | None = None,
    match: ClusterMatcher | None = None,
    scale: int = 2,
    save_tensor: Path | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Complete each of ``images`` [N x 1 x 28 x 28] ``n`` times (:func:`inpaint`) and write a PNG
    grid, one row per image: the original, the masked input (the hole in grey) and the
    completions. ``save_tensor`` also gets the completions as ``samples`` [N n x 1 x 28 x 28] in
    [0, 1] (readable by `eval --samples`), the ``originals`` and the ``missing`` mask (uint8),
    with the settings in its metadata. The PNG says how it was made (:func:`made_with`): the
    settings, and ``inpainting``: jumps, resample, n, digit, match_clusters and each image's
    ``missing`` mask (the hex of its 28 x 28 bits, row-major, 1 where missing). Returns the
    completions, [N x n x 1 x 28 x 28]."""
    check_output(output, PNG, "-o")
    check_output(save_tensor, TENSORS, "--save-tensor")
    count_for(n, "-n", scale=scale, each=len(images))
    resample = inpaint_resample(resample, match is not None)
    repaint = {"n": n, "digit": digit, "jumps": jumps, "resample": resample, "match": match}
    completions = inpaint(run, images, missing, sampling, **repaint, progress=progress)
    missing = missing.to(torch.bool).broadcast_to(images.shape)
    masked = torch.where(missing, torch.full_like(images, HOLE), images)
    rows = torch.cat([images[:, None], masked[:, None], completions], dim=1)  # (N, n + 2, 1, 28, 28)
    settings = inpaint_settings(run, sampling, matched=match is not None)
    inpainting = {"jumps": jumps, "resample": resample, "n": n, "digit": digit, "match_clusters": match is not None}
    masks = [np.packbits(m.flatten().numpy()).tobytes().hex() for m in missing]  # 28 x 28 bits each
    picture = made_with(run, settings, inpainting={**inpainting, "missing": masks})
    save_grid(rows.reshape(-1, *images.shape[1:]), output, nrow=n + 2, scale=scale, metadata=picture)
    if save_tensor is not None:
        metadata = {
            "run": run.path.name,
            "sampling": json.dumps(settings.to_dict(), sort_keys=True),
            "inpainting": json.dumps(inpainting),
        }
        tensors = {
            "samples": completions.reshape(-1, *images.shape[1:]),
            "originals": images,
            "missing": missing.to(torch.uint8),
        }
        save_tensors(save_tensor, tensors, metadata)
    return completions


def interpolate_to_files(
    run: LoadedRun,
    a: Endpoint,
    b: Endpoint,
    output: Path,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    frames: int = INTERPOLATE_FRAMES,
    digit: int | None = None,
    scale: int = 2,
    progress: bool = True,
) -> torch.Tensor:
    """Walk from ``a`` to ``b`` (:func:`interpolate`) and write the frames as one PNG strip, or as
    an animated GIF when ``output`` ends in ``.gif``. The picture says how it was made
    (:func:`made_with`): the settings, and ``interpolation``: frames, digit and the ``ends``, each
    a seed or ``"digit"`` (a digit inverted). Returns the frames, [frames x 1 x 28 x 28]."""
    check_output(output, PICTURE, "-o")
    count_for(frames, "--frames", scale=scale, low=2)
    ends = [end if isinstance(end, int) and not isinstance(end, bool) else "digit" for end in (a, b)]
    settings = interpolate_settings(run, sampling, "digit" in ends)  # a bad setting fails first
    walk = interpolate(run, a, b, sampling, frames=frames, digit=digit, progress=progress)
    picture = made_with(run, settings, interpolation={"frames": frames, "digit": digit, "ends": ends})
    if output.suffix.lower() == ".gif":
        save_gif(walk[:, None], output, nrow=1, scale=scale, metadata=picture)  # one digit per frame
    else:
        save_grid(walk, output, nrow=frames, scale=scale, metadata=picture)
    return walk


def invert_to_files(
    run: LoadedRun,
    images: torch.Tensor,
    output: Path,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    steps: list[int],
    digit: int | None = None,
    scale: int = 2,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Invert ``images`` [N x 1 x 28 x 28] and reconstruct them (:func:`invert`,
    :func:`reconstruct`) at each step count in ``steps``, and write a PNG grid, one row per image:
    the original, then its reconstruction at each count. The PNG says how it was made
    (:func:`made_with`): the settings, whose ``steps`` are the counts, and ``inversion``: digit.
    Returns, per count, its ``steps``, the mean ``mse`` and the mean ``psnr`` (dB) over the images."""
    check_output(output, PNG, "-o")
    rows, reconstructions = [], []
    for count in steps:
        noise = invert(run, images, sampling, digit=digit, steps=count, progress=progress)
        back = reconstruct(run, noise, sampling, digit=digit, steps=count, progress=progress)
        mse, psnr = reconstruction_error(images, back)
        rows.append({"steps": count, "mse": float(mse.mean()), "psnr": float(psnr.mean())})
        reconstructions.append(back)
    grid = torch.stack([images, *reconstructions], dim=1)  # (N, 1 + len(steps), 1, 28, 28)
    settings = {**invert_settings(run, sampling, steps=max(steps, default=None)).to_dict(), "steps": list(steps)}
    picture = made_with(run, settings, inversion={"digit": digit})
    save_grid(grid.reshape(-1, *images.shape[1:]), output, nrow=1 + len(steps), scale=scale, metadata=picture)
    return rows
