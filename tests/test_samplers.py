"""Samplers against diffusers' reference schedulers: same model outputs in, same states out."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn

from mnist_diffusion.config import DiffusionConfig, Guidance
from mnist_diffusion.diffusion.guidance import Denoiser
from mnist_diffusion.diffusion.samplers import Walk, ddim_sample, ddpm_sample, dpmpp_2m_sample, spaced_timesteps
from mnist_diffusion.diffusion.schedule import Schedule

SHAPE = (3, 1, 6, 6)


class FakeNet(nn.Module):
    """A smooth, t-dependent stand-in for a trained network (deterministic, cheap)."""

    num_classes = 0

    def forward(self, x, t, y=None):
        return 0.6 * torch.tanh(x) * torch.cos(t.float() / 150.0)[:, None, None, None] + 0.05


def run_reference(scheduler, model, steps, seed, step_kwargs=None):
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=g)
    for t in scheduler.timesteps:
        tt = torch.full((SHAPE[0],), int(t), dtype=torch.long)
        x = scheduler.step(model(x, tt), t, x, generator=g, **(step_kwargs or {})).prev_sample
    return x


def schedule(name="cosine", timesteps=100):
    return Schedule(DiffusionConfig(schedule=name, timesteps=timesteps))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_matches_diffusers(prediction, clip):
    sched = schedule("linear", 50)
    model = FakeNet()
    ours = ddpm_sample(
        Denoiser(model, sched, "eps" if prediction == "epsilon" else "v", clip_x0=clip),
        SHAPE,
        Walk(torch.Generator().manual_seed(1)),
    )
    ref = DDPMScheduler(
        num_train_timesteps=50,
        trained_betas=sched.float64["betas"].numpy(),
        clip_sample=clip,
        variance_type="fixed_small",
        prediction_type=prediction,
    )
    torch.testing.assert_close(ours, run_reference(ref, model, 50, 1), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_matches_diffusers(eta, clip, steps):
    sched = schedule("cosine", 100)
    model = FakeNet()
    ours = ddim_sample(
        Denoiser(model, sched, "eps", clip_x0=clip),
        SHAPE,
        Walk(torch.Generator().manual_seed(2)),
        steps=steps,
        eta=eta,
    )
    ref = DDIMScheduler(
        num_train_timesteps=100,
        trained_betas=sched.float64["betas"].numpy(),
        clip_sample=clip,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    torch.testing.assert_close(
        ours, run_reference(ref, model, steps, 2, {"eta": eta, "use_clipped_model_output": True}), atol=2e-4, rtol=1e-4
    )


def dpmpp_pair(prediction, steps, *, sde=False, spacing=1.0, seed=3):
    """Our DPM-Solver++(2M) and diffusers' on the same FakeNet outputs, timesteps and noise: ours
    draws x_T and then, for the SDE, one z per step but the last (where its coefficient is 0)."""
    sched = schedule("cosine", 1000)
    model = FakeNet()
    ours = dpmpp_2m_sample(
        Denoiser(model, sched, "eps" if prediction == "epsilon" else "v", clip_x0=False),
        SHAPE,
        Walk(torch.Generator().manual_seed(seed)),
        steps=steps,
        sde=sde,
        spacing=spacing,
    )
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=sched.float64["betas"].numpy(),
        algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
        solver_order=2,
        prediction_type=prediction,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    ref.set_timesteps(timesteps=spaced_timesteps(1000, steps, spacing))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g)
    for i, t in enumerate(ref.timesteps):
        noise = torch.randn(SHAPE, generator=g) if sde and i + 1 < steps else torch.zeros(SHAPE)
        out = model(x, torch.full((SHAPE[0],), int(t), dtype=torch.long))
        x = ref.step(out, t, x, variance_noise=noise).prev_sample
    return ours, x


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpmpp_2m_matches_diffusers(prediction, steps):
    ours, ref = dpmpp_pair(prediction, steps)
    torch.testing.assert_close(ours, ref, atol=5e-4, rtol=1e-3)
    # diffusers' own trailing spacing gives the same timesteps as ours
    trailing = DPMSolverMultistepScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    trailing.set_timesteps(steps)
    assert trailing.timesteps.tolist() == spaced_timesteps(1000, steps)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpmpp_2m_sde_matches_diffusers(prediction, steps):
    ours, ref = dpmpp_pair(prediction, steps, sde=True, seed=4)
    torch.testing.assert_close(ours, ref, atol=5e-4, rtol=1e-3)
    ode, _ = dpmpp_pair(prediction, steps, sde=False, seed=4)
    assert (ode - ours).abs().max() > 1e-2  # a different sampler: the noise changes the result


@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("steps,power", [(10, 0.6), (20, 0.5), (8, 2.0)])
def test_dpmpp_2m_with_a_spacing_power_matches_diffusers_on_the_same_timesteps(sde, steps, power):
    ours, ref = dpmpp_pair("v_prediction", steps, sde=sde, spacing=power, seed=5)
    torch.testing.assert_close(ours, ref, atol=5e-4, rtol=1e-3)


def test_spaced_timesteps_power_closed_form_and_always_distinct():
    assert spaced_timesteps(1000, 10, 0.6) == [round(1000 * (1 - i / 10) ** 0.6) - 1 for i in range(10)]
    assert spaced_timesteps(1000, 4, 2.0) == [999, 561, 249, 61]  # 1000 (3/4)^2 = 562.5 rounds to even
    for T in (20, 300, 1000):
        for steps in sorted({1, 2, 10, 50, T // 2, T} & set(range(1, T + 1))):
            for power in (0.1, 0.5, 1.0, 2.0, 4.0):
                ts = spaced_timesteps(T, steps, power)
                assert len(ts) == steps and ts[0] == T - 1 and ts[-1] >= 0
                assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert spaced_timesteps(50, 50, 0.3) == list(range(49, -1, -1))  # every step: no choice left
    with pytest.raises(ValueError):
        spaced_timesteps(100, 10, 0.0)


def test_ddim_walks_the_spaced_timesteps():
    seen = []
    ddim_sample(
        Denoiser(FakeNet(), schedule("cosine", 100), "eps"),
        SHAPE,
        Walk(torch.Generator().manual_seed(0), callback=lambda i, t, x, x0: seen.append(t)),
        steps=7,
        spacing=0.5,
    )
    assert seen == spaced_timesteps(100, 7, 0.5)


def test_spaced_timesteps_match_diffusers_trailing():
    for steps in (1, 7, 10, 50, 1000):
        ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
        ref.set_timesteps(steps)
        assert spaced_timesteps(1000, steps) == ref.timesteps.tolist()
    with pytest.raises(ValueError):
        spaced_timesteps(100, 101)


def test_guidance_one_equals_conditional_and_zero_equals_unconditional():
    class CondNet(nn.Module):
        num_classes = 10

        def forward(self, x, t, y):
            return x * 0.1 + y.float()[:, None, None, None] * 0.01

    sched = schedule("cosine", 100)
    x = torch.randn(SHAPE)
    labels = torch.tensor([1, 2, 3])
    cond = Denoiser(CondNet(), sched, labels=labels, guidance=Guidance(labels=1.0), clip_x0=False)(x, 50)[0]
    uncond = Denoiser(CondNet(), sched, labels=labels, guidance=Guidance(labels=0.0), clip_x0=False)(x, 50)[0]
    torch.testing.assert_close(cond, x * 0.1 + labels.float()[:, None, None, None] * 0.01)
    torch.testing.assert_close(uncond, x * 0.1 + 0.1)
    w3 = Denoiser(CondNet(), sched, labels=labels, guidance=Guidance(labels=3.0), clip_x0=False)(x, 50)[0]
    torch.testing.assert_close(w3, uncond + 3.0 * (cond - uncond))


def test_autoguidance_extrapolates_from_the_guide_to_the_model():
    class Net(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x, t, y=None):
            assert y is None
            return x * self.scale + t.float()[:, None, None, None] * 1e-3

    sched = schedule("cosine", 100)
    x = torch.randn(SHAPE)
    good, weak = Net(0.1), Net(0.3)

    def eps(w, guide=weak):
        return Denoiser(good, sched, guidance=Guidance(auto=w), guide=guide, clip_x0=False)(x, 50)[0]

    torch.testing.assert_close(eps(1.0), x * 0.1 + 0.05)  # w = 1: the model alone
    torch.testing.assert_close(eps(0.0), x * 0.3 + 0.05)  # w = 0: the guide alone
    torch.testing.assert_close(eps(2.5), eps(0.0) + 2.5 * (eps(1.0) - eps(0.0)))  # Karras et al. 2024
    torch.testing.assert_close(eps(2.5, guide=None), eps(1.0))  # no guide: no guidance


def test_guidance_stops_above_max_sigma():
    # Guidance over an interval (Kynkäänniemi et al. 2024): a step whose sigma is above max_sigma is
    # the model alone, in one network call; at or below it, the guided combination.
    class CondNet(nn.Module):
        num_classes = 4

        def __init__(self, scale):
            super().__init__()
            self.scale, self.calls = scale, 0

        def forward(self, x, t, y):
            self.calls += 1
            return x * self.scale + y.float()[:, None, None, None] * 0.01

    sched = schedule("cosine", 100)
    x, labels = torch.randn(SHAPE), torch.tensor([0, 1, 3])
    ab = sched.float64["alphas_cumprod"]
    sigmas = {t: math.sqrt((1 - float(ab[t])) / float(ab[t])) for t in (10, 50, 90)}
    assert [round(sched.sigma(t), 12) for t in sigmas] == [round(s, 12) for s in sigmas.values()]
    limit = (sigmas[50] + sigmas[90]) / 2  # guided at t = 10 and 50, not at 90

    def run(t, max_sigma):
        good, weak = CondNet(0.1), CondNet(0.3)
        guidance = Guidance(auto=2.0, clusters=1.5, max_sigma=max_sigma)
        eps = Denoiser(good, sched, labels=labels, guidance=guidance, guide=weak, clip_x0=False)(x, t)[0]
        return eps, good.calls + weak.calls

    for t in (10, 50, 90):
        guided, calls = run(t, None)
        plain = Denoiser(CondNet(0.1), sched, labels=labels, guidance=Guidance(), clip_x0=False)(x, t)[0]
        assert calls == 2 and not torch.allclose(guided, plain)  # one batch with and without labels, one guide
        limited, limited_calls = run(t, limit)
        if sigmas[t] <= limit:
            torch.testing.assert_close(limited, guided)
            assert limited_calls == 2
        else:
            torch.testing.assert_close(limited, plain)
            assert limited_calls == 1


def test_autoguidance_with_labels_plus_classifier_free_guidance():
    # A clustered run: the guide sees the same labels, and cluster guidance s adds (s - 1)(D(x|c) - D(x|0)).
    class CondNet(nn.Module):
        num_classes = 4

        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x, t, y):
            return x * self.scale + y.float()[:, None, None, None] * 0.01

    sched = schedule("cosine", 100)
    x = torch.randn(SHAPE)
    labels = torch.tensor([0, 1, 3])
    good, weak = CondNet(0.1), CondNet(0.3)
    c = labels.float()[:, None, None, None] * 0.01

    def eps(w, s):
        guidance = Guidance(auto=w, clusters=s)
        return Denoiser(good, sched, labels=labels, guidance=guidance, guide=weak, clip_x0=False)(x, 50)[0]

    cond, weak_cond, null = x * 0.1 + c, x * 0.3 + c, x * 0.1 + 0.04  # D(x|c), D_guide(x|c), D(x|0)
    torch.testing.assert_close(eps(1.0, 1.0), cond)
    torch.testing.assert_close(eps(2.0, 1.0), weak_cond + 2.0 * (cond - weak_cond))  # autoguidance alone
    torch.testing.assert_close(eps(1.0, 1.5), null + 1.5 * (cond - null))  # classifier-free alone
    torch.testing.assert_close(eps(2.0, 1.3), weak_cond + 2.0 * (cond - weak_cond) + 0.3 * (cond - null))
