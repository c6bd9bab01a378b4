"""Editing with a trained denoiser, in plain functions written like the samplers: DDIM inversion
(the deterministic sampler run backwards, from x_0 up to x_T), RePaint inpainting (Lugmayr et
al. 2022) and spherical interpolation of noise. No files and no runs: tensors in [-1, 1] in and
out, with an explicit ``torch.Generator`` wherever there is noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import INPAINT_MAX_EVALUATIONS
from .guidance import Denoiser
from .samplers import _progress, ddim_step, spaced_timesteps
from .schedule import Schedule


def alpha_bar(schedule: Schedule, t: int) -> torch.Tensor:
    """alpha_bar_t as a 0-dim tensor; t = -1 stands for x_0 itself (alpha_bar = 1)."""
    ab = schedule.alphas_cumprod
    return ab[t] if t >= 0 else torch.ones((), device=ab.device)


@torch.inference_mode()
def ddim_invert(
    denoiser: Denoiser, x0: torch.Tensor, *, steps: int, spacing: float = 1.0, progress: bool = False
) -> torch.Tensor:
    """DDIM inversion: the deterministic DDIM update (Song et al. 2021, eq. 12 with eta = 0, an
    Euler step of the ODE of Sec. 4.3) run from x_0 up to x_{T-1} over the same ``steps``
    timesteps as :func:`ddim_sample` walks down, so that DDIM from the result gives about ``x0``
    back (their Sec. 5.4, "reconstruction from latent space").

    :param x0: [N x C x H x W] images in [-1, 1].
    :return: x_{T-1}, [N x C x H x W]: the noise that DDIM with eta = 0 turns into about ``x0``.

    Each step from s up to t needs eps at (x_t, t), where x_t is what is being computed: it uses
    eps at (x_s, t) instead, an error that shrinks with the step, so more steps invert better.
    """
    sched = denoiser.schedule
    timesteps = spaced_timesteps(sched.num_timesteps, steps, spacing)[::-1]  # low noise to T-1
    x = x0.float()
    a_s = alpha_bar(sched, -1)
    for t in _progress(timesteps, progress, "ddim inversion"):
        # 1. eps at the next timestep up, t, from the current x_s.
        eps, _ = denoiser(x, t)
        # 2. Eq. 12 with sigma = 0 from s to t: the "predicted x_0" from x_s and that eps, then
        #    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
        x0_pred = (x - (1 - a_s).sqrt() * eps) / a_s.sqrt()
        a_t = alpha_bar(sched, t)
        x = a_t.sqrt() * x0_pred + (1 - a_t).sqrt() * eps
        a_s = a_t
    return x


def repaint_evaluations(steps: int, jumps: int, resample: int) -> int:
    """The network evaluations of :func:`repaint_schedule`'s walk, counted without walking it: the
    ``steps`` down, and ``jumps`` more for each of the resample - 1 walks back of each of the
    steps // jumps blocks."""
    return steps + (resample - 1) * jumps * (steps // jumps)


def check_repaint(steps: int, jumps: int, resample: int) -> None:
    """A ValueError unless ``jumps`` and ``resample`` are at least 1 and RePaint's walk on
    ``steps`` steps takes at most INPAINT_MAX_EVALUATIONS network evaluations."""
    if steps < 1 or jumps < 1 or resample < 1:
        raise ValueError(f"--steps, --jumps and --resample must be at least 1 (got {steps}, {jumps}, {resample})")
    work = repaint_evaluations(steps, jumps, resample)
    if work > INPAINT_MAX_EVALUATIONS:
        raise ValueError(
            f"--resample {resample} with --jumps {jumps} on {steps} steps takes {work:,} network "
            f"evaluations, more than {INPAINT_MAX_EVALUATIONS:,}: use a smaller --resample or "
            "--steps"
        )


def repaint_schedule(steps: int, jumps: int, resample: int) -> list[int]:
    """The walk of RePaint's resampling (Lugmayr et al. 2022, Sec. 4.2 and their code's
    ``get_schedule_jump``) over positions 0..``steps`` of a sampler's timesteps (0: x_{T-1},
    ``steps``: x_0). It goes down one position at a time; at every ``jumps``-th position counted
    from x_0 it goes back up ``jumps`` positions and redoes them, until each such block has been
    walked ``resample`` times in all. ``resample`` = 1 is plain sampling, 0, 1, ..., steps.
    A top block shorter than ``jumps`` is walked once."""
    check_repaint(steps, jumps, resample)
    left = {k: resample - 1 for k in range(steps, jumps - 1, -jumps)}  # positions that jump back
    k, path = 0, [0]
    while k < steps:
        k += 1
        path.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            path.extend(range(k - 1, k - jumps - 1, -1))
            k -= jumps
    return path


@torch.inference_mode()
def repaint(
    denoiser: Denoiser,
    x0_known: torch.Tensor,
    known: torch.Tensor,
    *,
    steps: int,
    spacing: float = 1.0,
    jumps: int = 1,
    resample: int = 1,
    generator: torch.Generator,
    forward_generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1): fill the unknown pixels of ``x0_known`` with
    the model, on ``steps`` timesteps spaced by ``spacing``, resampling as
    :func:`repaint_schedule` says.

    :param x0_known: [N x C x H x W] images in [-1, 1]; only their ``known`` pixels are read.
    :param known: bool, broadcastable to ``x0_known``: True where a pixel is known.
    :param generator: the reverse steps' noise, drawn as DDIM with eta = 1 draws it (x_T, then one
        z per step but the last), so with nothing known and ``resample`` = 1 this is that sampler.
    :param forward_generator: the forward process's noise (the known pixels, the jumps back).
    :return: x_0, [N x C x H x W]: ``x0_known`` where known, the model's completion elsewhere.
    """
    sched = denoiser.schedule
    timesteps = spaced_timesteps(sched.num_timesteps, steps, spacing) + [-1]  # position -> t; -1: x_0
    shape = tuple(x0_known.shape)
    known = known.to(device=device, dtype=torch.bool)
    x0_known = x0_known.to(device=device, dtype=torch.float32)
    path = repaint_schedule(steps, jumps, resample)
    # 1. x_{T-1} ~ N(0, I) everywhere.
    x = torch.randn(shape, generator=generator, device=device)
    for k, k_next in _progress(list(zip(path, path[1:], strict=False)), progress, "repaint"):
        t, s = timesteps[k], timesteps[k_next]
        a_t, a_s = alpha_bar(sched, t), alpha_bar(sched, s)
        if k_next < k:
            # 5. Jump back up from t to s > t with the forward process, eq. 4 between the two:
            #    q(x_s | x_t) = N(sqrt(a_s / a_t) x_t, (1 - a_s / a_t) I).
            ratio = a_s / a_t
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * torch.randn(shape, generator=forward_generator, device=device)
            continue
        # 2. Unknown pixels: an ancestral step from t down to s (DDIM with eta = 1; RePaint eq. 9).
        eps, x0 = denoiser(x, t)
        z = torch.randn(shape, generator=generator, device=device) if s >= 0 else None
        unknown = ddim_step(x0, eps, a_t, a_s, 1.0, z)
        # 3. Known pixels: x_s ~ q(x_s | x_0), DDPM eq. 4 (RePaint eq. 8); x_0 itself at the end.
        if s >= 0:
            noise = torch.randn(shape, generator=forward_generator, device=device)
            known_s = a_s.sqrt() * x0_known + (1 - a_s).sqrt() * noise
        else:
            known_s = x0_known
        # 4. x_s = m * known + (1 - m) * unknown (RePaint eq. 10).
        x = torch.where(known, known_s, unknown)
    return x


def slerp(a: torch.Tensor, b: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) from ``a`` to ``b`` [N x ...], each sample on its
    own great circle: x(w) = sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, with
    theta the angle between a and b; linear where they are (nearly) parallel. w = 0 gives a and
    w = 1 gives b exactly, and with |a| = |b| every x(w) has that norm too, as Gaussian noise in
    many dimensions nearly always does (a straight line between two noises would cut inside).

    :return: [K x N x ...], one interpolation per weight.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs two tensors of one shape (got {tuple(a.shape)} and {tuple(b.shape)})")
    fa, fb = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()  # (N, D)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp(min=1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]  # (N, 1)
    sin = torch.sin(theta)
    frames = []
    for w in weights:
        if not math.isfinite(w):
            raise ValueError(f"slerp weights must be finite (got {w})")
        linear = (1 - w) * fa + w * fb
        spherical = (torch.sin((1 - w) * theta) * fa + torch.sin(w * theta) * fb) / sin.clamp(min=1e-30)
        frames.append(torch.where(sin > 1e-6, spherical, linear).reshape(a.shape).to(a.dtype))
    return torch.stack(frames)
