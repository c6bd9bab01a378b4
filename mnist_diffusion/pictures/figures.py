"""Figures drawn with matplotlib and saved as PNG: the forward process, the loss curve and
denoising trajectories."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..io import atomic_write_bytes  # noqa: E402
from .grids import GRID_PADDING, tile  # noqa: E402


def figure_png(fig, dpi: int = 110, *, tight: bool = True, metadata: dict[str, str] | None = None) -> bytes:
    """The figure as PNG bytes, closed, with ``metadata`` as text chunks; without the software
    version, so the same figure gives the same bytes. ``tight`` crops it to what is drawn (which
    draws it twice)."""
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=dpi,
        bbox_inches="tight" if tight else None,
        metadata={"Software": None, **(metadata or {})},
    )
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, figure_png(fig, metadata=metadata))


def forward_figure(
    rows: torch.Tensor, timesteps: list[int], alpha_bars: list[float], path: str | Path, title: str
) -> None:
    """Rows of noised digits: ``rows`` is [R x K x 1 x 28 x 28] in [0, 1] (R digits, K timesteps);
    each column is labelled with its t and sqrt(alpha_bar_t), the share of the digit left."""
    r, k = rows.shape[:2]
    grid = tile(rows.reshape(r * k, *rows.shape[2:]).clamp(0, 1), nrow=k, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(1.0 * k + 0.6, 1.0 * r + 1.0))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    pitch = rows.shape[-1] + GRID_PADDING  # pixels from one tile to the next
    ax.set_xticks([GRID_PADDING + pitch * i + rows.shape[-1] / 2 for i in range(k)])
    ax.set_xticklabels([f"t={t}\n{math.sqrt(a):.2f}" for t, a in zip(timesteps, alpha_bars, strict=True)], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_xlabel(r"timestep t, and $\sqrt{\bar\alpha_t}$ (share of the digit left)", fontsize=9)
    ax.set_title(title, fontsize=10, pad=28)
    save_figure(fig, path)


def loss_figure(records: list[dict], path: str | Path, title: str) -> None:
    """Training loss (log scale) and learning rate against the optimizer step."""
    steps = [r["step"] for r in records if "loss" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(steps, losses, color="tab:blue", lw=1.2, label="loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (MSE)")
    ax.grid(alpha=0.3, which="both")
    lr_steps = [r["step"] for r in records if "lr" in r]
    if lr_steps:
        ax2 = ax.twinx()
        ax2.plot(lr_steps, [r["lr"] for r in records if "lr" in r], color="tab:orange", lw=1, alpha=0.7)
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def trajectory_figure(
    frames: torch.Tensor, labels: list[str], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Denoising trajectories as a PNG file (see :func:`trajectory_plot`), carrying ``metadata`` as text."""
    save_figure(trajectory_plot(frames, labels), path, metadata)


def trajectory_plot(frames: torch.Tensor, labels: list[str]):
    """Denoising trajectories: ``frames`` is [K x N x 1 x H x W] in [0, 1] (K moments, N
    samples); one row per sample, columns left to right from noise to image. Returns the figure."""
    k, n = frames.shape[:2]
    rows = frames.transpose(0, 1).reshape(n * k, *frames.shape[2:])  # (N*K, 1, H, W), row-major per sample
    grid = tile(rows.clamp(0, 1), nrow=k, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(0.9 * k + 0.6, 0.9 * n + 0.8))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    pitch = frames.shape[-1] + GRID_PADDING  # pixels from one tile to the next
    ax.set_xticks([GRID_PADDING + pitch * i + frames.shape[-1] / 2 for i in range(k)])
    ax.set_xticklabels(labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_title("denoising trajectory: one row per sample, from noise (left) to image (right)", fontsize=9, pad=20)
    return fig
