"""The training objective: a simple MSE on the network's prediction (Ho et al. 2020, eq. 14)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import DiffusionConfig
from .schedule import Schedule


def diffusion_loss(
    model: nn.Module,
    schedule: Schedule,
    cfg: DiffusionConfig,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the network's output and its target, averaged over the batch.

    :param x0: clean images [N x C x H x W] in [-1, 1]; :param t: [N] timesteps in 0..T-1;
    :param noise: eps ~ N(0, I), like x0; :param y: optional [N] labels.
    Targets: eps (``prediction="eps"``) or v (``"v"``). With ``loss_weighting="min-snr"`` each
    sample is weighted by min(SNR, 5) / SNR for eps or min(SNR, 5) / (SNR + 1) for v
    (Hang et al. 2023, eq. 8 and its v form), which equals the x_0-MSE weighted by min(SNR, 5).
    """
    x_t = schedule.q_sample(x0, t, noise)
    target = noise if cfg.prediction == "eps" else schedule.v_target(x0, t, noise)
    per_sample = (model(x_t, t, y) - target).pow(2).mean(dim=(1, 2, 3))  # (N,)
    if cfg.loss_weighting == "min-snr":
        snr = schedule.snr(t)
        weight = snr.clamp(max=5.0) / (snr if cfg.prediction == "eps" else snr + 1)
        per_sample = per_sample * weight
    return per_sample.mean()
