"""The NLL bound (mnist_diffusion.diffusion.nll) against torch.distributions and on oracle / null models."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fake_digits
from torch import nn
from torch.distributions import Normal, kl_divergence

from mnist_diffusion.config import DiffusionConfig, RunConfig
from mnist_diffusion.diffusion.nll import discretized_gaussian_log_likelihood, nll_bpd, normal_kl, stratified_timesteps
from mnist_diffusion.diffusion.schedule import Schedule, extract

T = 20  # a short schedule keeps the end-to-end checks at a few hundred forward passes


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 500, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(2, 500, generator=g, dtype=torch.float64) * 2
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)


def _direct_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Bin probabilities straight from Normal.cdf; the edge bins extend to -inf and +inf."""
    d = Normal(mean, log_scale.exp())
    upper = torch.where(x > 0.999, torch.ones_like(x), d.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), d.cdf(x - 1 / 255))
    return (upper - lower).log()


def test_discretized_gaussian_matches_normal_cdf():
    g = torch.Generator().manual_seed(1)
    pixels = torch.cat([torch.tensor([0, 255, 0, 255, 1, 254]), torch.randint(0, 256, (994,), generator=g)])
    x = pixels.double() / 127.5 - 1  # includes both edge bins
    mean = torch.rand(1000, generator=g, dtype=torch.float64) * 2.2 - 1.1
    log_scale = torch.rand(1000, generator=g, dtype=torch.float64) * 3 - 3.5  # sigma in e^-3.5 .. e^-0.5
    ours = discretized_gaussian_log_likelihood(x, mean, log_scale)
    direct = _direct_log_likelihood(x, mean, log_scale)
    finite = direct > -15  # beyond that, differences of CDFs near 1 lose their digits in float64
    assert finite.sum() > 500
    torch.testing.assert_close(ours[finite], direct[finite], rtol=1e-6, atol=1e-9)
    assert torch.isfinite(ours).all() and (ours <= 0).all()


def test_discretized_gaussian_sums_to_one_and_stays_finite_in_tails():
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # every pixel value
    for mean, log_scale in ((0.3, -2.0), (-1.0, -5.0), (0.97, -1.0)):
        ll = discretized_gaussian_log_likelihood(
            x, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
        )
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # A bin hundreds of standard deviations away: tiny, but a finite log-probability.
    far = discretized_gaussian_log_likelihood(
        torch.tensor([1.0, 0.5], dtype=torch.float64),
        torch.tensor(-1.0, dtype=torch.float64),
        torch.tensor(math.log(1e-3), dtype=torch.float64),
    )
    assert torch.isfinite(far).all() and (far < -1e4).all()


def test_stratified_timesteps_partition_and_exact_case():
    g = torch.Generator().manual_seed(0)
    t, w = stratified_timesteps(1000, 20, 7, g)
    assert t.shape == (19, 7) and w.shape == (19,)
    assert w.sum().item() == 999  # the strata tile t = 1..999, so the estimate is unbiased
    starts = torch.cumsum(torch.cat([torch.ones(1, dtype=torch.float64), w[:-1]]), 0).long()
    assert ((t >= starts[:, None]) & (t < (starts + w.long())[:, None])).all()
    t_full, w_full = stratified_timesteps(T, T, 3, g)
    assert torch.equal(t_full, torch.arange(1, T)[:, None].expand(-1, 3)) and (w_full == 1).all()
    t_none, _ = stratified_timesteps(T, None, 3, g)
    assert torch.equal(t_none, t_full)


def test_stratified_estimate_is_unbiased_for_a_fixed_function():
    f = torch.linspace(0, 1, 100, dtype=torch.float64) ** 3  # f(t), t = 0..99
    g = torch.Generator().manual_seed(0)
    t, w = stratified_timesteps(100, 8, 20000, g)  # 20,000 independent draws of the 7 strata
    estimates = (w[:, None] * f[t]).sum(0)  # (20000,)
    assert estimates.mean().item() == pytest.approx(f[1:].sum().item(), rel=2e-3)


class _Oracle(nn.Module):
    """Returns the true noise of x_t, knowing the clean images x0 of the batch."""

    def __init__(self, x0: torch.Tensor, schedule: Schedule):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # nll_bpd reads the device off a parameter
        self.x0, self.schedule = x0, schedule

    def forward(self, x_t, t, y=None):
        a = extract(self.schedule.sqrt_alphas_cumprod, t, x_t.shape)
        s = extract(self.schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return (x_t - a * self.x0) / s


class _Zeros(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, y=None):
        return torch.zeros_like(x_t)


@pytest.fixture(scope="module")
def setup():
    cfg = RunConfig(diffusion=DiffusionConfig(schedule="cosine", timesteps=T, prediction="eps"))  # the oracle gives eps
    schedule = Schedule(cfg.diffusion)
    images = torch.from_numpy(fake_digits(8, seed=3)[0])  # uint8 (8, 28, 28)
    x0 = images.float().div(127.5).sub(1).unsqueeze(1)
    return cfg, schedule, images, x0


def _bpd(model, cfg, schedule, images, k, seed=0):
    return nll_bpd(
        model,
        schedule,
        images,
        batch_size=len(images),
        generator=torch.Generator().manual_seed(seed),
        timesteps_subsample=k,
    )


def test_oracle_model_beats_zero_model(setup):
    cfg, schedule, images, x0 = setup
    oracle = _bpd(_Oracle(x0, schedule), cfg, schedule, images, None)
    zeros = _bpd(_Zeros(), cfg, schedule, images, None)
    assert oracle["estimate"] == "exact" and oracle["timesteps_evaluated"] == T
    assert oracle["bpd"] < zeros["bpd"] - 1.0
    # The oracle's KL terms vanish: what is left is the prior and the decoder's discretization.
    assert oracle["kl_bpd"] < 1e-3
    assert oracle["bpd"] == pytest.approx(oracle["prior_bpd"] + oracle["decoder_bpd"] + oracle["kl_bpd"])
    assert zeros["kl_bpd"] > 0.1


def test_subsample_with_all_timesteps_equals_full_sum(setup):
    cfg, schedule, images, _ = setup
    full = _bpd(_Zeros(), cfg, schedule, images, None, seed=5)
    k_equals_t = _bpd(_Zeros(), cfg, schedule, images, T, seed=5)
    assert k_equals_t["bpd"] == full["bpd"] and k_equals_t["estimate"] == "exact"
    sub = _bpd(_Zeros(), cfg, schedule, images, 5, seed=5)
    assert sub["estimate"] == "stratified" and sub["timesteps_evaluated"] == 5
    assert sub["bpd"] == pytest.approx(full["bpd"], rel=0.2)  # unbiased, and close on a smooth curve


def test_nll_refuses_non_uint8_images(setup):
    cfg, schedule, images, _ = setup
    with pytest.raises(ValueError, match="uint8"):
        _bpd(_Zeros(), cfg, schedule, images.float(), None)
