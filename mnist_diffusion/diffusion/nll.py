"""Negative log-likelihood in bits per dimension, from the variational bound (Ho et al. 2020, Sec. 3.3).

For an image x_0 in [-1, 1] (uint8 pixels mapped as x / 127.5 - 1), with 0-based timesteps
t = 0 .. T-1 as in :mod:`mnist_diffusion.schedule`, the bound is (Ho et al. 2020, eq. 5)

    L = L_T + sum_{t=1}^{T-1} L_t + L_0
    L_T = KL(q(x_T | x_0) || N(0, I))                           the prior term, closed form
    L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))         x_t ~ q(x_t | x_0)
    L_0 = -log p(x_0 | x_1)                                     the discretized Gaussian decoder, eq. 13

p(x_{t-1} | x_t) is the Gaussian with the posterior mean at the model's clipped x_0 and the fixed
posterior variance beta_tilde_t; for the decoder the variance is beta_tilde at t = 1, since
beta_tilde_0 = 0 (improved-diffusion's ``posterior_log_variance_clipped``). This is
improved-diffusion's ``_vb_terms_bpd`` / ``calc_bpd_loop``, with exact normal CDFs in log space
instead of their tanh approximation. Nats become bits per dimension by dividing by ln 2 and by
the 784 pixels.

Each L_t with t >= 1 costs one forward pass per image, so all T terms of N images cost N x T
passes. :func:`nll_bpd` by default estimates the sum over t = 1..T-1 from K - 1 strata of
consecutive timesteps: one timestep per image is drawn uniformly inside each stratum and its term
is weighted by the stratum size. The estimate is unbiased; L_0 and L_T are always exact; K = T
gives the full sum.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import pixels_to_x0
from .schedule import Schedule, extract

DEFAULT_NLL_TIMESTEPS = 40  # K: terms of the bound evaluated per image (t = 0 + K - 1 strata)
_BITS = math.log(2.0)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (shapes broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, accurate far into either tail.

    Phi(hi) - Phi(lo) = Phi(hi) (1 - exp(log Phi(lo) - log Phi(hi))); where the interval lies
    right of 0 the symmetric form Phi(-lo) - Phi(-hi) keeps the small numbers small.
    """
    right = lo > 0
    a, b = torch.where(right, -hi, lo), torch.where(right, -lo, hi)  # now Phi(b) - Phi(a), a < b, b mostly <= 0
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1.0 - 1e-16))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit pixels x in [-1, 1] under N(mean, exp(log_scale)^2) integrated over each
    pixel's bin of width 2/255 (Ho et al. 2020, eq. 13); the first bin extends to -inf and the last
    to +inf, so the 256 probabilities sum to 1. Elementwise, in nats."""
    inv_std = torch.exp(-log_scale)
    lo, hi = (x - 1.0 / 255 - mean) * inv_std, (x + 1.0 / 255 - mean) * inv_std
    log_cdf_hi = torch.special.log_ndtr(hi)  # bin (-inf, x + 1/255] at x = -1
    log_one_minus_cdf_lo = torch.special.log_ndtr(-lo)  # bin [x - 1/255, inf) at x = 1
    return torch.where(x < -0.999, log_cdf_hi, torch.where(x > 0.999, log_one_minus_cdf_lo, _log_ndtr_diff(lo, hi)))


def _per_image_bits(nats: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` nats -> ``(N,)`` bits per dimension."""
    return nats.flatten(1).mean(dim=1) / _BITS


def stratified_timesteps(
    num_timesteps: int, k: int | None, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL terms t = 1..T-1 to evaluate for ``n`` images, and the weight of each.

    ``k`` counts all terms including t = 0, so t = 1..T-1 is split into ``k - 1`` strata of
    near-equal size; each image gets one timestep drawn uniformly inside each stratum, weighted by
    the stratum's size. ``k`` None or >= T: T - 1 strata of one timestep each, the exact sum (the
    same random numbers are drawn, so the noise that follows does not depend on ``k``'s path).

    :return: ``(t, weight)``: ``(K-1, n)`` int64 timesteps and ``(K-1,)`` float64 weights, on the
        generator's device.
    """
    device = generator.device
    k = num_timesteps if k is None else min(k, num_timesteps)
    if k < 2:
        raise ValueError(f"need at least 2 timesteps (t = 0 and one stratum), got {k}")
    edges = torch.linspace(1, num_timesteps, k, dtype=torch.float64).round().long().to(device)  # (K,)
    start, size = edges[:-1], edges[1:] - edges[:-1]  # (K-1,) strata [start, start + size)
    u = torch.rand(k - 1, n, generator=generator, device=device, dtype=torch.float64)
    t = start[:, None] + (u * size[:, None]).long().clamp(max=size[:, None] - 1)  # (K-1, n)
    return t, size.double()


def float64_device(device: torch.device) -> torch.device:
    """Where the bound's float64 arithmetic runs for a network on ``device``: there, or on the CPU
    for Apple's MPS, which has no float64."""
    return torch.device("cpu") if device.type == "mps" else device


class _Bound:
    """The terms of the bound for one model, in float64, with one generator for all the noise."""

    def __init__(self, model: nn.Module, schedule: Schedule, generator: torch.Generator):
        self.model, self.schedule, self.generator = model, schedule, generator
        self.model_device = next(model.parameters()).device
        self.device = float64_device(self.model_device)  # where the float64 maths runs
        self.tab = {k: v.to(self.device) for k, v in schedule.float64.items()}  # float64 tables, (T,)
        # log beta_tilde with t = 0 replaced by t = 1 (beta_tilde_0 = 0): the decoder's variance.
        post = self.tab["posterior_variance"]
        self.log_var = torch.log(torch.cat([post[1:2], post[1:]]))

    def _at(self, name: str, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return extract(self.tab[name], t, x0.shape)

    def model_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's clipped x_0 for float64 ``x_t`` (B, C, H, W) and timesteps ``t`` (B,)."""
        x_t32, t_net = x_t.float().to(self.model_device), t.to(self.model_device)
        out = self.model(x_t32, t_net).float()
        x0 = self.schedule.eps_and_x0(x_t32, t_net, out, self.schedule.cfg.prediction)[1]
        return x0.clamp(-1.0, 1.0).to(self.device, torch.float64)

    def noisy(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) in float64, eq. 4."""
        g = self.generator
        noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=torch.float64).to(self.device)
        return self._at("sqrt_alphas_cumprod", t, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def prior(self, x0: torch.Tensor) -> torch.Tensor:
        """1. L_T = KL(q(x_T | x_0) || N(0, I)), closed form; (B,) bits/dim."""
        last = torch.full((x0.shape[0],), self.schedule.num_timesteps - 1, device=self.device)
        mean_T = self._at("sqrt_alphas_cumprod", last, x0) * x0
        logvar_T = torch.log(extract(1.0 - self.tab["alphas_cumprod"], last, x0.shape))
        return _per_image_bits(normal_kl(mean_T, logvar_T, torch.zeros_like(x0), torch.zeros_like(x0)))

    def decoder(self, x0: torch.Tensor) -> torch.Tensor:
        """2. L_0 = -log p(x_0 | x_1): the discretized Gaussian at the posterior mean of the model's
        x_0 (eq. 13); (B,) bits/dim."""
        zero = torch.zeros(x0.shape[0], dtype=torch.long, device=self.device)
        x_t = self.noisy(x0, zero)
        mean_p = (
            self._at("posterior_mean_coef1", zero, x0) * self.model_x0(x_t, zero)
            + self._at("posterior_mean_coef2", zero, x0) * x_t
        )
        ll = discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * extract(self.log_var, zero, x0.shape))
        return _per_image_bits(-ll)

    def kl(self, x0: torch.Tensor, k: int | None) -> torch.Tensor:
        """3. The sum over t >= 1 of L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) (eq. 6-7, both
        with variance beta_tilde_t), from ``k`` terms (:func:`stratified_timesteps`); (B,) bits/dim."""
        ts, weights = stratified_timesteps(self.schedule.num_timesteps, k, x0.shape[0], self.generator)
        total = torch.zeros(x0.shape[0], dtype=torch.float64, device=self.device)
        for t, w in zip(ts.to(self.device), weights.to(self.device), strict=True):
            x_t = self.noisy(x0, t)
            coef1, lv = self._at("posterior_mean_coef1", t, x0), extract(self.log_var, t, x0.shape)
            # The two means share coef2 * x_t, so their difference is coef1 * (x0 - x0_model).
            total += w * _per_image_bits(normal_kl(coef1 * x0, lv, coef1 * self.model_x0(x_t, t), lv))
        return total


@torch.inference_mode()
def nll_bpd(
    model: nn.Module,
    schedule: Schedule,
    images: torch.Tensor,
    *,
    batch_size: int = 250,
    generator: torch.Generator | None = None,
    progress: bool = False,
    timesteps_subsample: int | None = DEFAULT_NLL_TIMESTEPS,
) -> dict[str, Any]:
    """The variational bound on -log p(x_0) in bits per dimension, for real images.

    :param model: the network, in eval mode; its prediction type is ``schedule.cfg.prediction``.
    :param images: uint8 ``(N, 28, 28)`` pixels in 0..255.
    :param generator: draws the noise and the timesteps, on :func:`float64_device` of the model's
        device; seeded with 0 if None.
    :param timesteps_subsample: K, the number of terms evaluated per image (see
        :func:`stratified_timesteps`); None evaluates all T terms.
    :return: mean bits/dim ``bpd``, its standard error over images, the mean ``prior_bpd``
        (L_T), ``decoder_bpd`` (L_0) and ``kl_bpd`` (the sum of L_1..L_{T-1}), and which estimate
        was used. A class-conditional model is evaluated with its "null" label, so the bound is
        on the unconditional p(x).
    """
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(f"images must be uint8 (N, 28, 28), got {images.dtype} {tuple(images.shape)}")
    start_time = time.perf_counter()
    device = float64_device(next(model.parameters()).device)
    bound = _Bound(model, schedule, generator or torch.Generator(device).manual_seed(0))
    prior, decoder, kl = [], [], []
    bar = tqdm(total=len(images), desc="NLL", unit="img", disable=not progress, leave=False)
    for s in range(0, len(images), batch_size):
        x0 = pixels_to_x0(images[s : s + batch_size].to(device), torch.float64)  # (B, 1, 28, 28)
        prior.append(bound.prior(x0))
        decoder.append(bound.decoder(x0))
        kl.append(bound.kl(x0, timesteps_subsample))
        bar.update(x0.shape[0])
    bar.close()
    terms = tuple(torch.cat(v).cpu() for v in (prior, decoder, kl))
    return _summary(*terms, schedule.num_timesteps, timesteps_subsample, model, time.perf_counter() - start_time)


def _summary(
    prior: torch.Tensor,
    decoder: torch.Tensor,
    kl: torch.Tensor,
    num_t: int,
    k: int | None,
    model: nn.Module,
    seconds: float,
) -> dict[str, Any]:
    """The result of :func:`nll_bpd` from the per-image terms (N,) in bits/dim."""
    per_image = prior + decoder + kl  # (N,)
    k_used = num_t if k is None or k >= num_t else k
    exact = k_used == num_t
    return {
        "bpd": float(per_image.mean()),
        "bpd_stderr": float(per_image.std() / math.sqrt(len(per_image))) if len(per_image) > 1 else 0.0,
        "prior_bpd": float(prior.mean()),
        "decoder_bpd": float(decoder.mean()),
        "kl_bpd": float(kl.mean()),
        "n_images": len(per_image),
        "timesteps": num_t,
        "timesteps_evaluated": k_used,
        "estimate": "exact" if exact else "stratified",
        "estimate_note": (
            f"all {num_t} terms"
            if exact
            else f"L_0 and L_T exact; L_1..L_{num_t - 1} from {k_used - 1} strata, one random timestep per image "
            "in each, weighted by the stratum size (unbiased)"
        ),
        "conditioning": "null label (unconditional p(x))" if getattr(model, "num_classes", 0) else "none",
        "seconds": round(seconds, 2),
    }
