"""Samplers: plain functions that turn noise into images, each written as numbered steps that
cite the equation they implement.

Every sampler takes a :class:`~mnist_diffusion.diffusion.guidance.Denoiser` (the network plus the
schedule, prediction type, labels and guidance), the output shape, a :class:`Walk` (the explicit
``torch.Generator`` and what else every sampler takes alike) and its own settings, and returns
x_0 in [-1, 1] as [N x C x H x W]. By default a sampler starts from pure noise at t = T-1; given
a :class:`Start` (``Walk.start``), it starts from that x_t at that t instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import SamplingConfig
from .guidance import Denoiser

# Called after every step with (step index, timestep, x_t after the step, predicted x_0).
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Start:
    """Where a sampler begins instead of pure noise at T-1: ``x_t`` [N x C x H x W] at timestep
    ``t`` (0 <= t < T). The sampler takes one step from t to the first of its timesteps below t,
    then walks the rest as usual: SDEdit starts from a noised drawing, interpolation from a slerp
    of inverted digits."""

    x_t: torch.Tensor
    t: int


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_t: torch.Tensor,
    a_prev: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step from timestep t down to prev (Song et al. 2021, eq. 12), given the predicted
    ``x0`` and ``eps`` at t and alpha_bar at both (``a_t``, ``a_prev``: 0-dim tensors, 1 at x_0):

        sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)      eq. 16
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z     z: ``noise``, or none

    eta = 1 is an ancestral step with DDPM's posterior variance between the two timesteps."""
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    if noise is not None:
        x = x + sigma * noise
    return x


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


@dataclass(frozen=True)
class Walk:
    """What every sampler takes alike, besides the network and its own settings: the randomness,
    the device, where to begin and what to report on the way. Every draw comes from
    ``generator``, x_T first and then each step's noise, so the same generator state and
    settings give the same x_0 bit for bit."""

    generator: torch.Generator  # x_T, then each step's fresh noise z, in order
    device: torch.device | str = "cpu"  # where x and the noise are made
    start: Start | None = None  # begin from this x_t at its t instead of pure noise at T-1
    progress: bool = False  # a progress bar over the steps
    callback: StepCallback | None = None  # called after every step (see StepCallback)

    def begin(self, timesteps: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
        """The first x and the timesteps to walk: x_T ~ N(0, I) and all of ``timesteps``, or
        ``start``'s x_t followed by the timesteps below its t."""
        if self.start is None:
            return self.randn(shape), timesteps
        x_t, t = self.start.x_t, self.start.t
        if tuple(x_t.shape) != tuple(shape):
            raise ValueError(f"the start x_t has shape {tuple(x_t.shape)}, expected {tuple(shape)}")
        if not 0 <= t <= timesteps[0]:
            raise ValueError(f"the start timestep must be between 0 and {timesteps[0]} (got {t})")
        return x_t.to(device=self.device, dtype=torch.float32), [t] + [s for s in timesteps if s < t]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """z ~ N(0, I) of ``shape``, the generator's next draw."""
        return torch.randn(shape, generator=self.generator, device=self.device)

    def steps(self, timesteps: list[int], name: str):
        """(i, t) for each timestep to walk, behind a progress bar called ``name`` if asked."""
        return enumerate(_progress(timesteps, self.progress, name))

    def after(self, i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        """Hand step i (at timestep t, x after it, the predicted x_0) to the callback, if any."""
        if self.callback is not None:
            self.callback(i, t, x, x0)


@torch.inference_mode()
def ddpm_sample(denoiser: Denoiser, shape: tuple[int, ...], walk: Walk) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2), with the posterior
    variance beta_tilde_t (eq. 7) as sigma_t^2. ``walk.start``: begin from x_t at t (:class:`Start`)."""
    sched = denoiser.schedule
    # 1. Start from pure noise x_T ~ N(0, I) (or from ``walk.start``).
    x, timesteps = walk.begin(list(range(sched.num_timesteps - 1, -1, -1)), shape)
    for i, t in walk.steps(timesteps, "ddpm"):
        # 2. Predict x_0 from x_t (clipped to [-1, 1] if asked).
        _, x0 = denoiser(x, t)
        tt = torch.full((shape[0],), t, device=walk.device, dtype=torch.long)
        # 3. Posterior mean of q(x_{t-1} | x_t, x_0), eq. 7.
        mean, var = sched.q_posterior(x0, x, tt)
        # 4. x_{t-1} = mean + sigma_t z, no noise at the last step.
        if t > 0:
            mean = mean + var.sqrt() * walk.randn(shape)
        x = mean
        walk.after(i, t, x, x0)
    return x


@torch.inference_mode()
def ddim_sample(
    denoiser: Denoiser, shape: tuple[int, ...], walk: Walk, *, steps: int, eta: float = 0.0, spacing: float = 1.0
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over ``steps`` timesteps spaced by ``spacing`` (see
    :func:`spaced_timesteps`); eta = 0 is deterministic, eta = 1 matches DDPM's ancestral variance.
    ``walk.start``: begin from x_t at t and walk the spaced timesteps below t (:class:`Start`)."""
    sched = denoiser.schedule
    ab = sched.alphas_cumprod
    # 1. Start from pure noise x_T ~ N(0, I) (or from ``walk.start``).
    x, timesteps = walk.begin(spaced_timesteps(sched.num_timesteps, steps, spacing), shape)
    for i, t in walk.steps(timesteps, "ddim"):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a_t = ab[t]
        a_prev = ab[prev] if prev >= 0 else torch.ones((), device=ab.device)
        # 2. Predict eps and x_0 ("predicted x_0" in eq. 12).
        eps, x0 = denoiser(x, t)
        # 3. The step with sigma_t(eta) of eq. 16: "direction pointing to x_t" and fresh noise, eq. 12.
        noise = walk.randn(shape) if eta > 0 and prev >= 0 else None
        x = ddim_step(x0, eps, a_t, a_prev, eta, noise)
        walk.after(i, t, x, x0)
    return x


@torch.inference_mode()
def dpmpp_2m_sample(
    denoiser: Denoiser, shape: tuple[int, ...], walk: Walk, *, steps: int, sde: bool = False, spacing: float = 1.0
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
    diffusion ODE in log-SNR time with data (x_0) prediction; first order on the first step and
    on the last step, which lands on sigma = 0 (x = predicted x_0).

    ``sde=True`` solves the diffusion SDE instead (SDE-DPM-Solver++(2M), Lu et al. 2022,
    Appendix B): each step decays x_s by e^{-h} more, moves that much further towards x_0, and
    adds back fresh noise of variance sigma_t^2 (1 - e^{-2h}). The noise corrects earlier errors,
    which narrows the gap to 1000-step DDPM at 20 to 50 steps. ``spacing``: see
    :func:`spaced_timesteps`. ``walk.start``: begin from x_t at t and walk the spaced timesteps
    below t (:class:`Start`); the first step from there is first order.
    """
    sched = denoiser.schedule
    ab = sched.alphas_cumprod

    def alpha_sigma_lambda(t: int):
        alpha, sigma = ab[t].sqrt(), (1 - ab[t]).sqrt()
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    # 1. Start from pure noise x_T ~ N(0, I) (or from ``walk.start``).
    x, timesteps = walk.begin(spaced_timesteps(sched.num_timesteps, steps, spacing), shape)
    x0_prev, h_prev = None, None
    for i, s in walk.steps(timesteps, "dpm++2m-sde" if sde else "dpm++2m"):
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
                z = walk.randn(shape)
                x = (sigma_t / sigma_s) * torch.exp(-h) * x + alpha_t * one_minus * d + sigma_t * one_minus.sqrt() * z
            else:
                # 4a. x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D, Algorithm 2.
                x = (sigma_t / sigma_s) * x - alpha_t * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        walk.after(i, s, x, x0)
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
    start: Start | None = None,
) -> torch.Tensor:
    """Run the sampler that ``settings`` (resolved: concrete steps and spacing) names; DDPM always
    takes all T steps. ``start``: begin from x_t at t instead of pure noise (:class:`Start`)."""
    walk = Walk(generator, device, start, progress, callback)
    if settings.sampler == "ddpm":
        return ddpm_sample(denoiser, shape, walk)
    if settings.steps is None or settings.spacing is None:
        raise ValueError("sample() needs resolved settings (SamplingConfig.resolve)")
    if settings.sampler == "ddim":
        return ddim_sample(denoiser, shape, walk, steps=settings.steps, eta=settings.eta, spacing=settings.spacing)
    sde = settings.sampler == "dpmpp-2m-sde"
    return dpmpp_2m_sample(denoiser, shape, walk, steps=settings.steps, sde=sde, spacing=settings.spacing)
