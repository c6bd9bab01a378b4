"""How fast training runs on this machine, against what the machine can do: the training step's
FLOPs (counted, not guessed), the measured images/s, the share of the machine's matrix rate that
is, and what a plan of N steps will take."""

from __future__ import annotations

import functools

import torch

from ..config import RunConfig
from ..diffusion.losses import diffusion_loss
from ..diffusion.schedule import Schedule
from ..nets.unet import build_model


@functools.cache
def step_flops_per_image(cfg: RunConfig) -> float:
    """Floating-point operations of one training step (forward, loss and backward; the optimizer
    and EMA are a rounding error beside them) per image: :func:`step_flop_counts`, summed."""
    return sum(step_flop_counts(cfg).values()) / cfg.train.batch_size


def step_flop_counts(cfg: RunConfig) -> dict[str, int]:
    """FLOPs of one training step on a batch of ``cfg.train.batch_size``, per aten op
    (``"aten.convolution"``, ``"aten.bmm"``, ...), counted by torch's FlopCounterMode on the meta
    device: shapes only, no arithmetic is done."""
    from torch.utils.flop_counter import FlopCounterMode

    b = cfg.train.batch_size
    with torch.device("meta"):
        model = build_model(cfg.model)
        x0, noise = torch.zeros(b, cfg.model.in_channels, 28, 28), torch.zeros(b, cfg.model.in_channels, 28, 28)
        t = torch.zeros(b, dtype=torch.long)
        y = torch.zeros(b, dtype=torch.long) if cfg.model.num_classes else None
        schedule = Schedule(cfg.diffusion, "meta")
        counter = FlopCounterMode(display=False)
        with counter:
            diffusion_loss(model, schedule, cfg.diffusion, x0, t, noise, y).backward()
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


def describe_speed(images_per_sec: float, flops_per_image: float, matmul_gflops: float) -> str:
    """ "160 images/s, 60 GFLOP/s: 57% of the matrix rate" """
    gflops = images_per_sec * flops_per_image / 1e9
    return f"{images_per_sec:,.0f} images/s, {gflops:.0f} GFLOP/s: {gflops / matmul_gflops:.0%} of the matrix rate"


def duration(seconds: float) -> str:
    """ "45 s", "12 min", "1 h 05 min": a wall time for people."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def machine_line(cfg: RunConfig, device: torch.device) -> str:
    """What this machine is and can do for ``cfg``'s training step (its matrix rate in the step's
    precision), for the estimate that follows the first steps."""
    from ..runtime import autocast_dtype, describe_machine, matmul_rate, precision_name

    dtype = autocast_dtype(cfg.train.precision, device)
    return (
        f"{describe_machine(device).line()}; {precision_name(dtype)} matrix rate "
        f"{matmul_rate(device, dtype or torch.float32):.0f} GFLOP/s; a training step is "
        f"{step_flops_per_image(cfg) / 1e6:.0f} MFLOP per image"
    )
