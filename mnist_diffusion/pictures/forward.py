"""The core of `mnistdiff visualize-forward`: real digits through q(x_t | x_0)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DiffusionConfig
from ..data.mnist import ensure_mnist, load_mnist
from ..diffusion import pixels_to_x0, x0_to_unit
from ..diffusion.schedule import Schedule
from .animation import save_gif
from .figures import forward_figure


def forward_timesteps(num_timesteps: int, columns: int) -> list[int]:
    """``columns`` timesteps evenly spaced from 0 to T-1, both ends included."""
    return [round(i * (num_timesteps - 1) / (columns - 1)) for i in range(columns)]


def forward_picture(
    cfg: DiffusionConfig, output: Path, *, digits: int, columns: int, seed: int, data_dir: Path
) -> None:
    """A PNG of ``digits`` test-set digits (rows) noised at ``columns`` evenly spaced t; or, when
    ``output`` ends in ``.gif``, an animated GIF with one frame per t."""
    ensure_mnist(data_dir)
    images, _ = load_mnist(data_dir, "test")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:digits]
    x0 = pixels_to_x0(images[idx])  # (R, 1, 28, 28) in [-1, 1]
    schedule = Schedule(cfg)
    ts = forward_timesteps(cfg.timesteps, columns)
    noise = torch.randn((len(ts), *x0.shape), generator=g)  # (K, R, 1, 28, 28)
    cols = [schedule.q_sample(x0, torch.full((len(x0),), t), noise[k]) for k, t in enumerate(ts)]
    rows = x0_to_unit(torch.stack(cols, dim=1))  # (R, K, 1, 28, 28) in [0, 1]
    if output.suffix.lower() == ".gif":
        save_gif(rows.transpose(0, 1), output, scale=2)  # (K, R, 1, 28, 28): a frame per t
        return
    ab = schedule.float64["alphas_cumprod"]
    title = f"forward process q(x_t | x_0): {cfg.schedule} schedule, T = {cfg.timesteps}"
    forward_figure(rows, ts, [float(ab[t]) for t in ts], output, title)
