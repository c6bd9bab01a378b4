"""Animated GIFs of a process (denoising, the forward process, an interpolation), with Pillow.

Each frame is a grid of images (:func:`~mnist_diffusion.pictures.grids.grid_image`) over a thin
bar that fills from left to right as the animation plays, so a looping GIF shows where it is.
The bar also keeps every frame distinct: Pillow merges equal consecutive frames into one, and a
GIF of K frames should hold K. A GIF's comment carries how it was made, one ``key: value`` line
per item of its metadata. The same frames and metadata give the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io import atomic_write_bytes
from .grids import grid_image

FRAME_MS = 120  # how long each frame shows
LAST_MS = 1200  # the last frame (the image, the far end) shows longer before the loop restarts
BAR = 2  # the progress bar's height, in tile pixels (times the scale)


def gif_frames(frames: torch.Tensor, nrow: int | None = None, scale: int = 2) -> list[Image.Image]:
    """``frames`` [K x N x 1 x H x W] in [0, 1] (K moments of N images) as K greyscale pictures:
    the N images tiled ``nrow`` to a row (:func:`grid_image`) over a bar filled to (k + 1) / K."""
    pictures = []
    k_total = len(frames)
    for k in range(k_total):
        grid = np.asarray(grid_image(frames[k], nrow, scale))  # (H', W') uint8
        width = grid.shape[1]
        filled = np.clip((k + 1) / k_total * width - np.arange(width), 0.0, 1.0)  # a partly lit last pixel
        bar = np.broadcast_to(np.round(255 * filled).astype(np.uint8), (BAR * scale, width))
        pictures.append(Image.fromarray(np.concatenate([grid, bar]), mode="L"))
    return pictures


def save_gif(
    frames: torch.Tensor,
    path: str | Path,
    *,
    nrow: int | None = None,
    scale: int = 2,
    frame_ms: int = FRAME_MS,
    last_ms: int = LAST_MS,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``frames`` [K x N x 1 x H x W] in [0, 1] as an animated GIF of K frames that loops
    for ever, crash-safely (:func:`~mnist_diffusion.io.atomic_write_bytes`), with ``metadata`` in
    its comment as ``key: value`` lines (:func:`~mnist_diffusion.pictures.grids.picture_text`
    reads them back); a key holding ": " or a line break, or a value holding a line break, is a
    ValueError."""
    if frames.ndim != 5 or len(frames) < 1:
        raise ValueError(f"an animation needs frames of shape (K, N, 1, H, W), got {tuple(frames.shape)}")
    comment = {}
    if metadata:
        bad = [key for key, value in metadata.items() if ": " in key or any(c in key + value for c in "\r\n")]
        if bad:
            raise ValueError(f"a GIF comment holds one `key: value` line per item; cannot write {bad}")
        comment["comment"] = "\n".join(f"{key}: {value}" for key, value in metadata.items()).encode("utf-8")
    pictures = gif_frames(frames, nrow, scale)
    durations = [frame_ms] * (len(pictures) - 1) + [last_ms]
    buf = io.BytesIO()
    pictures[0].save(
        buf, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0, **comment
    )
    atomic_write_bytes(path, buf.getvalue())
