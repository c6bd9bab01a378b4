"""The optimization recipe: AdamW, its learning-rate schedule, and the EMA of the weights."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..config import RunConfig


def lr_at(step: int, cfg: RunConfig, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 10% of lr at
    ``total_steps`` (the planned epochs; ``max_steps`` only stops early, so resuming with a
    larger budget replays the same schedule)."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(num_updates: int, cfg: RunConfig) -> float:
    """The EMA decay for update n (0-based); with ema_warmup, min(decay, (1 + n) / (2 + gamma + n)).

    The warm-up alone is a power-function EMA (Karras et al. 2024, eq. 3 in this discrete form):
    after n updates the average weighs the weights of step i about as i^gamma, so its relative width
    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3)) does not depend on the run's length
    (gamma = 8: 0.09). ``ema_decay`` caps it: 0.999 from update 999 gamma + 998 on (8,990 at 8)."""
    decay = cfg.train.ema_decay
    if cfg.train.ema_warmup:
        decay = min(decay, (1 + num_updates) / (2 + cfg.train.ema_gamma + num_updates))
    return decay


def fused_adamw(device: torch.device, version: str = torch.__version__) -> bool:
    """AdamW's fused kernel where the installed torch has one: CUDA; the CPU from torch 2.4 (a
    step of the default preset's optimizer takes about 1 ms instead of 4); Apple's MPS from 2.5.
    Elsewhere the foreach loop."""
    major, minor = (int(v) for v in version.split("+")[0].split(".")[:2])
    since = {"cuda": (0, 0), "cpu": (2, 4), "mps": (2, 5)}.get(device.type)
    return since is not None and (major, minor) >= since


def make_ema(model: nn.Module, cfg: RunConfig) -> AveragedModel:
    """An exponential moving average of ``model``'s weights (torch.optim.swa_utils)."""

    def ema_update(ema_params, params, num_averaged):
        decay = ema_decay_at(ema.updates, cfg)
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    ema = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    ema.updates = 0  # optimizer steps averaged so far, a Python int so reading it never syncs
    return ema


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``'s weights with the config's learning rate, beta2 and weight decay. For the
    step on the device (``step_on_device``) its learning rate is a device tensor, and on CUDA it is
    capturable: a CUDA graph replays it, learning-rate changes included, without recapture."""
    # float64 on the CPU: then the fused kernel computes exactly what it does from a Python float
    lr_dtype = torch.float64 if device.type == "cpu" else torch.float32
    lr = torch.tensor(cfg.train.lr, dtype=lr_dtype, device=device) if cfg.train.step_on_device else cfg.train.lr
    capturable = cfg.train.step_on_device and device.type == "cuda"
    return torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=(0.9, cfg.train.adam_beta2),
        weight_decay=cfg.train.weight_decay,
        fused=fused_adamw(device),
        capturable=capturable,
    )
