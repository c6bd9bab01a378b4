"""The diffusion maths, with no files and no training loop: noise schedules and the forward
process (:mod:`.schedule`), the training objective (:mod:`.losses`), the guided denoiser
(:mod:`.guidance`), the samplers (:mod:`.samplers`) and the likelihood bound (:mod:`.nll`).

Images live in [-1, 1] here: :func:`pixels_to_x0` and :func:`x0_to_unit` cross that border.
"""

from __future__ import annotations

import torch


def pixels_to_x0(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels ``(N, 28, 28)`` -> images ``(N, 1, 28, 28)`` in [-1, 1] (x / 127.5 - 1)."""
    return images.unsqueeze(1).to(dtype).div_(127.5).sub_(1.0)


def x0_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1], clamped: what pictures and sample files hold."""
    return ((x + 1) / 2).clamp(0, 1)
