"""The network as a sampler sees it: (x_t, t) -> (eps, x_0), with guidance.

Guidance extrapolates from a weaker prediction towards the model's. The weak predictions are the
run's guide, an early EMA of the same weights (autoguidance, Karras et al. 2024, "Guiding a
diffusion model with a bad version of itself", eq. 2), and the same network without its label,
D(x|null) (classifier-free guidance, Ho & Salimans 2022, eq. 6 with w = 1 + their w; on digit
labels, or on the pixel clusters of a clustered run, Hu et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import Guidance
from ..runtime import autocast
from .schedule import Schedule


@dataclass
class Denoiser:
    """The network seen from a sampler: (x_t, t) -> (eps, x_0).

    ``labels`` ([N] ints: digits or clusters) condition a class-conditional network. The output
    D(x|c) is guided by the scales in ``guidance`` (None or 1: off):

        out = D(x|c)
        out = D_guide(x|c) + auto (out - D_guide(x|c))       ``guidance.auto``, with a ``guide``
        out = out + (s - 1) (D(x|c) - D(x|null))             s: ``guidance.labels`` or ``.clusters``

    Alone, the second line is out = D(x|null) + s (D(x|c) - D(x|null)). A step whose noise level
    sigma = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t) is above ``guidance.max_sigma`` is not guided:
    out = D(x|c), one network call (guidance over an interval, Kynkäänniemi et al. 2024).
    ``clip_x0`` clamps the predicted x_0 to [-1, 1] and recomputes eps from it, as diffusers'
    ``clip_sample`` does. ``autocast`` runs the network in that dtype's autocast (bf16 or fp16;
    None: fp32); the samplers' arithmetic stays in fp32.
    """

    model: nn.Module
    schedule: Schedule
    prediction: str = "eps"
    labels: torch.Tensor | None = None
    guidance: Guidance = field(default_factory=Guidance)
    clip_x0: bool = True
    guide: nn.Module | None = None
    autocast: torch.dtype | None = None

    def __call__(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = x_t.shape[0]
        tt = torch.full((n,), t, device=x_t.device, dtype=torch.long)
        auto = 1.0 if self.guidance.auto is None else self.guidance.auto
        autoguided = self.guide is not None and auto != 1.0
        label_cfg = next((s for s in (self.guidance.labels, self.guidance.clusters) if s not in (None, 1.0)), 1.0)
        if not self.guidance.guides_at(self.schedule.sigma(t)):
            autoguided, label_cfg = False, 1.0
        with autocast(x_t.device, self.autocast):
            if self.labels is not None and label_cfg != 1.0:  # with and without the labels, in one batch
                null = torch.full_like(self.labels, self.model.num_classes)
                both = self.model(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat([self.labels, null]))
                cond, uncond = both.float().chunk(2)
            else:
                cond, uncond = self.model(x_t, tt, self.labels).float(), None
            out = cond
            if autoguided:
                weak = self.guide(x_t, tt, self.labels).float()
                out = weak + auto * (cond - weak)
            if uncond is not None:
                out = out + (label_cfg - 1.0) * (cond - uncond)  # = uncond + w (cond - uncond) alone
        eps, x0 = self.schedule.eps_and_x0(x_t, tt, out.float(), self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            a = self.schedule.sqrt_alphas_cumprod[t]
            eps = (x_t - a * x0) / self.schedule.sqrt_one_minus_alphas_cumprod[t]
        return eps, x0
