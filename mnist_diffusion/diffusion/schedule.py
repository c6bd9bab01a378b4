"""Noise schedules and the closed-form forward process q(x_t | x_0) (Ho et al. 2020).

Timesteps are 0-based: ``t = 0 .. T-1`` index ``betas[t]``, the paper's beta_{t+1}. All tables
are computed in float64 and stored as float32 tensors on the schedule's device.
"""

from __future__ import annotations

import math

import torch

from ..config import DiffusionConfig


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas evenly spaced from beta_start to beta_end. Returns float64 [T]."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def betas_from_alpha_bar(alpha_bar, timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - alpha_bar(t+1 / T) / alpha_bar(t / T), clipped at max_beta (Nichol & Dhariwal
    2021, eq. 17 and the clipping below it). Returns float64 [T]."""
    s = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    ab = alpha_bar(s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)."""
    return betas_from_alpha_bar(lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2, timesteps)


def sigmoid_betas(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Jabri et al. 2022 (RIN), the sigmoid schedule of alpha_bar:
    alpha_bar(t) = (sigmoid(end/tau) - sigmoid((t (end - start) + start) / tau))
                   / (sigmoid(end/tau) - sigmoid(start/tau))."""
    v_start, v_end = 1 / (1 + math.exp(-start / tau)), 1 / (1 + math.exp(-end / tau))  # float64

    def alpha_bar(u):
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    return betas_from_alpha_bar(alpha_bar, timesteps)


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The betas of ``cfg.schedule`` for ``cfg.timesteps`` steps, float64 [T]."""
    if cfg.schedule == "linear":
        return linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    if cfg.schedule == "cosine":
        return cosine_betas(cfg.timesteps)
    if cfg.schedule == "sigmoid":
        return sigmoid_betas(cfg.timesteps)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """Gather ``a[t]`` for a batch of timesteps and reshape it to broadcast against x.

    :param a: a 1-D table [T]; :param t: [N] integer timesteps.
    :return: an [N x 1 x 1 x 1] tensor (as many trailing ones as x has dimensions after N).
    """
    return a[t].reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


class Schedule:
    """The tables of one noise schedule, and the forward process built on them."""

    def __init__(self, cfg: DiffusionConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.num_timesteps = cfg.timesteps
        betas = make_betas(cfg)  # float64 [T]
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        tables = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            # Posterior q(x_{t-1} | x_t, x_0) = N(mean, beta_tilde), Ho et al. 2020 eq. 6-7.
            "posterior_variance": betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        self.float64 = tables  # kept for exact reference computations (NLL, tests)
        log_sigma = 0.5 * torch.log((1.0 - alphas_cumprod) / alphas_cumprod)  # increasing in t
        # [T - 1]: the midpoints between neighbouring steps' ln sigma, for training_steps
        self.log_sigma_edges = ((log_sigma[1:] + log_sigma[:-1]) / 2).to(device=device, dtype=torch.float32)
        for name, table in tables.items():
            setattr(self, name, table.to(device=device, dtype=torch.float32))

    @property
    def final_alpha_bar(self) -> float:
        """alpha_bar at the last step: how much of x_0 survives in x_T (as a variance share)."""
        return float(self.float64["alphas_cumprod"][-1])

    def sigma(self, t: int) -> float:
        """The noise level of step t: sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), the std of the noise
        in x_t / sqrt(alpha_bar_t) (EDM's sigma, Karras et al. 2022)."""
        ab = float(self.float64["alphas_cumprod"][t])
        return math.sqrt((1.0 - ab) / ab)

    def training_steps(self, u: torch.Tensor) -> torch.Tensor:
        """The training timesteps [N] (int64) for uniforms ``u`` [N] in [0, 1), by
        ``cfg.noise_levels``: "uniform", floor(u T); "log-normal", the step whose sigma is nearest
        (in ln sigma) to exp(noise_mean + noise_std z), z = sqrt(2) erfinv(2u - 1) the normal
        quantile of u (EDM's training noise, Karras et al. 2022, Table 1), clamped to 0..T-1."""
        if self.cfg.noise_levels == "uniform":
            return (u * self.num_timesteps).to(torch.int64).clamp(max=self.num_timesteps - 1)
        z = math.sqrt(2.0) * torch.special.erfinv(2.0 * u.float() - 1.0)
        return torch.searchsorted(self.log_sigma_edges, self.cfg.noise_mean + self.cfg.noise_std * z)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) for timesteps t, [N]."""
        ab = self.alphas_cumprod[t]
        return ab / (1.0 - ab)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), eq. 4.

        :param x0: [N x C x H x W]; :param t: [N]; :param noise: like x0.
        """
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, Sec. 4)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.shape) * noise
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0
        )

    def eps_and_x0(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor, prediction: str):
        """Turn a network output (eps or v) into the pair (eps, x_0) that samplers need."""
        a = extract(self.sqrt_alphas_cumprod, t, x_t.shape)
        s = extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        if prediction == "eps":
            eps = out
            x0 = (x_t - s * eps) / a
        elif prediction == "v":
            x0 = a * x_t - s * out
            eps = s * x_t + a * out
        else:
            raise ValueError(f"unknown prediction {prediction!r}")
        return eps, x0

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and variance of q(x_{t-1} | x_t, x_0), eq. 6-7."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape) * x0
            + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        return mean, extract(self.posterior_variance, t, x_t.shape)
