"""Samplers: plain functions that turn noise into images, each written as numbered steps that
cite the equation they implement.

Every sampler takes a :class:`~mnist_diffusion.diffusion.guidance.Denoiser` (the network plus the
schedule, prediction type, labels and guidance), the output shape and an explicit
``torch.Generator``, and returns x_0 in [-1, 1] as [N x C x H x W].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..config import SamplingConfig
from .guidance import Denoiser

# Called after every step with (step index, timestep, x_t after the step, predicted x_0).
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def spaced_timesteps(num_timesteps: int, steps: int, power: float = 1.0) -> list[int]:
    """``steps`` distinct timesteps from T-1 down, t_i = round(T (1 - i/n)^power) - 1.

    power = 1 is the "trailing" spacing (Lin et al. 2024, Table 2): evenly spaced and always
    including T-1, so few-step samplers start from pure noise. power < 1 packs the steps towards
    high noise and leaves a longer last jump to x_0; power > 1 the other way (DDIM's "quadratic"
    is about 2). Where rounding would repeat a timestep, each is pushed down to stay below the
    one before (and above what the remaining steps need), so there are always ``steps`` of them.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps} (got {steps})")
    if not power > 0:
        raise ValueError(f"the spacing power must be positive (got {power})")
    if power == 1.0:  # the closed form diffusers uses, exactly
        ratio = num_timesteps / steps
        return [int(round(num_timesteps - i * ratio)) - 1 for i in range(steps)]
    out: list[int] = []
    for i in range(steps):
        t = int(round(num_timesteps * (1 - i / steps) ** power)) - 1
        if out:
            t = min(t, out[-1] - 1)
        out.append(max(t, steps - 1 - i))
    return out


def _progress(items, enabled: bool, desc: str):
    return tqdm(items, desc=desc, unit="step", leave=False, disable=not enabled)


@torch.inference_mode()
def ddpm_sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2), with the posterior
    variance beta_tilde_t (eq. 7) as sigma_t^2."""
    sched = denoiser.schedule
    # 1. Start from pure noise x_T ~ N(0, I).
    x = torch.randn(shape, generator=generator, device=device)
    for i, t in enumerate(_progress(range(sched.num_timesteps - 1, -1, -1), progress, "ddpm")):
        # 2. Predict x_0 from x_t (clipped to [-1, 1] if asked).
        _, x0 = denoiser(x, t)
        tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
        # 3. Posterior mean of q(x_{t-1} | x_t, x_0), eq. 7.
        mean, var = sched.q_posterior(x0, x, tt)
        # 4. x_{t-1} = mean + sigma_t z, no noise at the last step.
        if t > 0:
            mean = mean + var.sqrt() * torch.randn(shape, generator=generator, device=device)
        x = mean
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.inference_mode()
def ddim_sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    steps: int,
    eta: float = 0.0,
    spacing: float = 1.0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over ``steps`` timesteps spaced by ``spacing`` (see
    :func:`spaced_timesteps`); eta = 0 is deterministic, eta = 1 matches DDPM's ancestral variance."""
    sched = denoiser.schedule
    ab = sched.alphas_cumprod
    timesteps = spaced_timesteps(sched.num_timesteps, steps, spacing)
    # 1. Start from pure noise x_T ~ N(0, I).
    x = torch.randn(shape, generator=generator, device=device)
    for i, t in enumerate(_progress(timesteps, progress, "ddim")):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t = ab[t]
        a_prev = ab[prev] if prev >= 0 else torch.ones((), device=ab.device)
        # 2. Predict eps and x_0 ("predicted x_0" in eq. 12).
        eps, x0 = denoiser(x, t)
        # 3. sigma_t(eta), eq. 16.
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        # 4. "Direction pointing to x_t" and the step itself, eq. 12.
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and prev >= 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=device)
        if callback is not None:
            callback(i, t, x, x0)
    return x


@torch.inference_mode()
def dpmpp_2m_sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    steps: int,
    sde: bool = False,
    spacing: float = 1.0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
    diffusion ODE in log-SNR time with data (x_0) prediction; first order on the first step and
    on the last step, which lands on sigma = 0 (x = predicted x_0).

    ``sde=True`` solves the diffusion SDE instead (SDE-DPM-Solver++(2M), Lu et al. 2022,
    Appendix B): each step decays x_s by e^{-h} more, moves that much further towards x_0, and
    adds back fresh noise of variance sigma_t^2 (1 - e^{-2h}). The noise corrects earlier errors,
    which narrows the gap to 1000-step DDPM at 20 to 50 steps. ``spacing``: see
    :func:`spaced_timesteps`.
    """
    sched = denoiser.schedule
    ab = sched.alphas_cumprod
    timesteps = spaced_timesteps(sched.num_timesteps, steps, spacing)

    def alpha_sigma_lambda(t: int):
        alpha, sigma = ab[t].sqrt(), (1 - ab[t]).sqrt()
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    # 1. Start from pure noise x_T ~ N(0, I).
    x = torch.randn(shape, generator=generator, device=device)
    x0_prev, h_prev = None, None
    name = "dpm++2m-sde" if sde else "dpm++2m"
    for i, s in enumerate(_progress(timesteps, progress, name)):
        # 2. Data prediction D(x_s) at the current time.
        _, x0 = denoiser(x, s)
        if i + 1 == len(timesteps):
            # 3a. Last step to sigma = 0: alpha = 1, e^{-h} = 0 and no noise, so x = x_0 (first order).
            x = x0
        else:
            t = timesteps[i + 1]
            alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(s)
            alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(t)
            h = lambda_t - lambda_s
            if x0_prev is None:
                d = x0  # 3b. First step: DPM-Solver++(1), i.e. DDIM.
            else:
                # 3c. Second order: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i.
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            if sde:
                # 4b. x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D
                #           + sigma_t sqrt(1 - e^{-2h}) z,  z ~ N(0, I).
                one_minus = -torch.expm1(-2 * h)
                z = torch.randn(shape, generator=generator, device=device)
                x = (sigma_t / sigma_s) * torch.exp(-h) * x + alpha_t * one_minus * d + sigma_t * one_minus.sqrt() * z
            else:
                # 4a. x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D, Algorithm 2.
                x = (sigma_t / sigma_s) * x - alpha_t * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, s, x, x0)
    return x


def sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    settings: SamplingConfig,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the sampler that ``settings`` (resolved: concrete steps and spacing) names; DDPM always
    takes all T steps."""
    common = dict(generator=generator, device=device, progress=progress, callback=callback)
    if settings.sampler == "ddpm":
        return ddpm_sample(denoiser, shape, **common)
    if settings.steps is None or settings.spacing is None:
        raise ValueError("sample() needs resolved settings (SamplingConfig.resolve)")
    if settings.sampler == "ddim":
        return ddim_sample(denoiser, shape, steps=settings.steps, eta=settings.eta, spacing=settings.spacing, **common)
    sde = settings.sampler == "dpmpp-2m-sde"
    return dpmpp_2m_sample(denoiser, shape, steps=settings.steps, sde=sde, spacing=settings.spacing, **common)
