"""Schedules against their closed forms, and the forward process's statistics."""

import dataclasses
import math
import statistics

import pytest
import torch

from mnist_diffusion.config import DEFAULT, SEED, DiffusionConfig
from mnist_diffusion.diffusion.schedule import Schedule, cosine_betas, extract, linear_betas, sigmoid_betas


def test_linear_betas_closed_form():
    betas = linear_betas(300, 1e-4, 0.02)
    expected = torch.tensor([1e-4 + (0.02 - 1e-4) * i / 299 for i in range(300)], dtype=torch.float64)
    torch.testing.assert_close(betas, expected)


def test_original_linear_schedule_leaves_a_fifth_of_the_digit():
    sched = Schedule(SEED.diffusion)
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 299) for i in range(300))
    assert sched.final_alpha_bar == pytest.approx(expected, rel=1e-9)
    assert math.sqrt(sched.final_alpha_bar) == pytest.approx(0.22, abs=0.01)


def test_cosine_alpha_bar_matches_nichol_dhariwal_closed_form():
    T, s = 1000, 0.008
    ab = torch.cumprod(1 - cosine_betas(T), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 250, 500, 900, 990):
        # alpha_bar after steps 1..t+1 is f(t+1) / f(0) wherever no beta was clipped.
        assert float(ab[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_sigmoid_alpha_bar_matches_closed_form():
    T = 1000
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    g = lambda u: (sig(3) - sig(6 * u - 3)) / (sig(3) - sig(-3))  # noqa: E731
    ab = torch.cumprod(1 - sigmoid_betas(T), 0)
    for t in (0, 100, 500, 900):
        assert float(ab[t]) == pytest.approx(g((t + 1) / T) / g(0), rel=1e-9)


@pytest.mark.parametrize("name", ["cosine", "sigmoid"])
def test_default_style_schedules_end_at_pure_noise(name):
    assert Schedule(DiffusionConfig(schedule=name, timesteps=1000)).final_alpha_bar < 1e-3
    assert Schedule(DiffusionConfig(schedule=name, timesteps=50)).final_alpha_bar < 1e-3


def test_default_preset_ends_at_pure_noise():
    assert Schedule(DEFAULT.diffusion).final_alpha_bar < 1e-3


def test_betas_are_valid_probabilities():
    for name in ("linear", "cosine", "sigmoid"):
        betas = Schedule(DiffusionConfig(schedule=name, timesteps=200)).float64["betas"]
        assert (betas > 0).all() and (betas <= 0.999).all()


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from eq. 6-7 equals the Gaussian product computed directly."""
    sched = Schedule(DiffusionConfig(schedule="linear", timesteps=100))
    tables = sched.float64
    for t in (1, 10, 99):
        ab_prev, beta = tables["alphas_cumprod_prev"][t], tables["betas"][t]
        # prior x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood x_t ~ N(sqrt(1 - beta) x_{t-1}, beta)
        precision = 1 / (1 - ab_prev) + (1 - beta) / beta
        var = 1 / precision
        x0, xt = 0.3, -0.7
        mean = var * (ab_prev.sqrt() * x0 / (1 - ab_prev) + (1 - beta).sqrt() * xt / beta)
        got_mean, got_var = sched.q_posterior(
            torch.full((1, 1, 1, 1), x0), torch.full((1, 1, 1, 1), xt), torch.tensor([t])
        )
        assert float(got_var) == pytest.approx(float(var), rel=1e-5)
        assert float(got_mean) == pytest.approx(float(mean), rel=1e-5, abs=1e-6)


def test_q_sample_statistics():
    sched = Schedule(DiffusionConfig(schedule="cosine", timesteps=1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 2, 2), 0.8)
    for t in (0, 300, 700, 999):
        tt = torch.full((20000,), t)
        xt = sched.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        ab = float(sched.float64["alphas_cumprod"][t])
        assert float(xt.mean()) == pytest.approx(math.sqrt(ab) * 0.8, abs=0.01)
        assert float(xt.var()) == pytest.approx(1 - ab, abs=0.01 + 0.02 * (1 - ab))


def test_eps_and_v_round_trip():
    sched = Schedule(DiffusionConfig(timesteps=100))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn((4, 1, 5, 5), generator=g), torch.randn((4, 1, 5, 5), generator=g)
    t = torch.tensor([0, 10, 50, 99])
    xt = sched.q_sample(x0, t, eps)
    for prediction, out in (("eps", eps), ("v", sched.v_target(x0, t, eps))):
        got_eps, got_x0 = sched.eps_and_x0(xt, t, out, prediction)
        torch.testing.assert_close(got_eps, eps, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(got_x0, x0, atol=2e-3, rtol=1e-3)


def test_extract_shape():
    out = extract(torch.arange(10.0), torch.tensor([1, 2, 3]), torch.Size([3, 1, 28, 28]))
    assert out.shape == (3, 1, 1, 1) and out.flatten().tolist() == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- training noise levels


def test_uniform_training_steps_are_floor_u_times_T():
    sched = Schedule(DEFAULT.diffusion)
    u = torch.tensor([0.0, 0.0004, 0.5, 0.9999, 1.0 - 2.0**-24])
    assert sched.training_steps(u).tolist() == [0, 0, 500, 999, 999]


@pytest.mark.parametrize("schedule,mean,std", [("cosine", -1.2, 1.2), ("cosine", 0.5, 0.6), ("linear", -1.0, 2.0)])
def test_log_normal_training_steps_are_the_nearest_step_to_the_normal_quantile(schedule, mean, std):
    """Step chosen for u: the one whose ln sigma is nearest exp(mean + std * Phi^-1(u)), with the
    quantile from the standard library's NormalDist and sigma from the float64 tables."""
    cfg = dataclasses.replace(
        DEFAULT.diffusion, schedule=schedule, noise_levels="log-normal", noise_mean=mean, noise_std=std
    )
    sched = Schedule(cfg)
    ab = sched.float64["alphas_cumprod"]
    log_sigma = 0.5 * torch.log((1 - ab) / ab)
    u = (torch.arange(997, dtype=torch.float64) + 0.5) / 997
    got = sched.training_steps(u.float())
    for ui, t in zip(u.tolist(), got.tolist(), strict=True):
        target = mean + std * statistics.NormalDist().inv_cdf(ui)
        gaps = (log_sigma - target).abs()
        assert gaps[t] <= gaps.min() + 1e-4, (ui, t, int(gaps.argmin()))


def test_log_normal_training_steps_follow_the_distribution():
    """Over many uniforms, the share of steps with sigma below exp(m) is Phi(0) = 1/2 and below
    exp(m + s) is Phi(1); no step falls outside 0..T-1, even at u = 0."""
    cfg = dataclasses.replace(DEFAULT.diffusion, noise_levels="log-normal")
    sched = Schedule(cfg)
    t = sched.training_steps(torch.rand(200_000, generator=torch.Generator().manual_seed(0)))
    assert 0 <= int(t.min()) and int(t.max()) <= cfg.timesteps - 1
    assert int(sched.training_steps(torch.zeros(1))) == 0
    sigma = torch.tensor([sched.sigma(i) for i in range(cfg.timesteps)])[t]
    for k in (-1.0, 0.0, 1.0):
        share = (sigma.log() < cfg.noise_mean + k * cfg.noise_std).double().mean().item()
        assert share == pytest.approx(statistics.NormalDist().cdf(k), abs=0.01)
