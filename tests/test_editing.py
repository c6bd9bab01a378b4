"""Editing: DDIM inversion, RePaint and slerp against closed forms on Gaussian data (whose ideal
denoiser is known exactly), the promises of inpaint, interpolate, invert and SDEdit on a tiny
run, the animated GIFs, the input pictures, and the commands with their one-line errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.config import DiffusionConfig, Guidance, SamplingConfig
from mnist_diffusion.data.clusters import ClusterMatcher, draw_clusters
from mnist_diffusion.data.mnist import as_unit, load_mnist
from mnist_diffusion.diffusion.editing import ddim_invert, repaint, repaint_schedule, slerp
from mnist_diffusion.diffusion.guidance import Denoiser
from mnist_diffusion.diffusion.samplers import Start, Walk, ddim_sample, dpmpp_2m_sample, spaced_timesteps
from mnist_diffusion.diffusion.schedule import Schedule
from mnist_diffusion.errors import UserError
from mnist_diffusion.pictures.animation import save_gif
from mnist_diffusion.pictures.inputs import parse_mask, read_digit
from mnist_diffusion.runs.loader import load_run
from mnist_diffusion.sampling import editing as editing_module
from mnist_diffusion.sampling.editing import (
    edit_labels,
    inpaint,
    inpaint_settings,
    interpolate,
    invert,
    reconstruct,
    sdedit,
)
from mnist_diffusion.sampling.generate import generate, networks_for

runner = CliRunner()

# ----------------------------------------------------------------------------- Gaussian data, exactly denoised

MU = torch.tensor([0.3, -0.2, 0.1, 0.0])  # tiny "images" (N, 1, 2, 2), pixels in this order
CHOL = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.4, 0.2, 0.0, 0.0], [0.3, -0.1, 0.25, 0.0], [0.35, 0.1, 0.05, 0.15]])
COV = CHOL @ CHOL.T  # strongly correlated pixels


class GaussianDenoiser(nn.Module):
    """The ideal network for data x_0 ~ N(mu, Sigma): with a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t),
    E[x_0 | x_t] = mu + a Sigma (a^2 Sigma + s^2 I)^-1 (x_t - a mu), returned as eps or v."""

    num_classes = 0

    def __init__(self, schedule: Schedule, prediction: str = "v"):
        super().__init__()
        self.ab, self.prediction = schedule.float64["alphas_cumprod"], prediction

    def forward(self, x, t, y=None):
        assert (t == t[0]).all()
        ab = self.ab[t[0]]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        xt = x.reshape(len(x), -1).double()  # (N, 4)
        cov, mu = COV.double(), MU.double()
        gain = torch.linalg.solve(ab * cov + (1 - ab) * torch.eye(4, dtype=torch.float64), cov)  # A^-1 Sigma
        x0 = mu + a * (xt - a * mu) @ gain  # (Sigma A^-1 (x - a mu))^T, A and Sigma symmetric
        eps = (xt - a * x0) / s
        return (eps if self.prediction == "eps" else a * eps - s * x0).reshape(x.shape).float()


def gaussian(prediction: str = "v") -> Denoiser:
    schedule = Schedule(DiffusionConfig(schedule="cosine", timesteps=1000))
    return Denoiser(GaussianDenoiser(schedule, prediction), schedule, prediction, clip_x0=False)


def gaussian_samples(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (MU + torch.randn(n, 4, generator=g) @ CHOL.T).reshape(n, 1, 2, 2)


def test_a_sampler_started_at_the_top_is_plain_sampling_and_walks_only_the_timesteps_below():
    denoiser, shape = gaussian(), (5, 1, 2, 2)
    for run in (
        lambda walk: ddim_sample(denoiser, shape, walk, steps=8, spacing=0.5, eta=0.5),
        lambda walk: dpmpp_2m_sample(denoiser, shape, walk, steps=8, sde=True),
    ):
        plain = run(Walk(torch.Generator().manual_seed(4)))
        g = torch.Generator().manual_seed(4)
        x_top = torch.randn(shape, generator=g)  # what the sampler draws first; its noise then comes from g
        assert torch.equal(run(Walk(g, start=Start(x_top, 999))), plain)  # the same computation, bit for bit
    seen = []
    ddim_sample(
        denoiser,
        shape,
        Walk(torch.Generator(), start=Start(x_top, 600), callback=lambda i, t, x, x0: seen.append(t)),
        steps=8,
        spacing=0.5,
    )
    assert seen == [600] + [t for t in spaced_timesteps(1000, 8, 0.5) if t < 600]
    with pytest.raises(ValueError, match="shape"):
        ddim_sample(denoiser, (4, 1, 2, 2), Walk(g, start=Start(x_top, 600)), steps=8)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_inversion_then_ddim_returns_the_input_better_with_more_steps(prediction):
    denoiser, x0 = gaussian(prediction), gaussian_samples(64)
    errors = {}
    for steps in (10, 50, 200):
        noise = ddim_invert(denoiser, x0, steps=steps, spacing=1.0)
        back = ddim_sample(
            denoiser, x0.shape, Walk(torch.Generator(), start=Start(noise, 999)), steps=steps, spacing=1.0
        )
        errors[steps] = (back - x0).pow(2).mean().item()
    assert errors[10] > 2 * errors[50] > 4 * errors[200] and errors[200] < 1e-4, errors
    # The sampling spacing 0.4 leaves a long first step up from x_0: editing's EDIT_SPACING of 1 is why.
    noise = ddim_invert(denoiser, x0, steps=50, spacing=0.4)
    back = ddim_sample(denoiser, x0.shape, Walk(torch.Generator(), start=Start(noise, 999)), steps=50, spacing=0.4)
    assert (back - x0).pow(2).mean().item() > 5 * errors[50]


def test_repaint_completes_a_gaussian_with_its_conditional_mean_and_variance():
    known = torch.tensor([True, True, False, False])
    x_k = torch.tensor([0.9, 0.5])  # far from mu_k: the conditional mean moves well away from mu_u
    s_kk, s_uk, s_uu = COV[known][:, known], COV[~known][:, known], COV[~known][:, ~known]
    mean = MU[~known] + s_uk @ torch.linalg.solve(s_kk, x_k - MU[known])  # mu_u + S_uk S_kk^-1 (x_k - mu_k)
    std = (s_uu - s_uk @ torch.linalg.solve(s_kk, s_uk.T)).diag().sqrt()
    n = 4000
    x0 = torch.zeros(n, 4)
    x0[:, known] = x_k

    def completions(resample: int, jumps: int = 5) -> torch.Tensor:
        out = repaint(
            gaussian(),
            x0.reshape(n, 1, 2, 2),
            known.reshape(1, 1, 2, 2),
            steps=50,
            jumps=jumps,
            resample=resample,
            generator=torch.Generator().manual_seed(0),
            forward_generator=torch.Generator().manual_seed(1),
        )
        assert torch.equal(out.reshape(n, 4)[:, known], x0[:, known])  # the known pixels, exactly
        return out.reshape(n, 4)[:, ~known]

    x_u = completions(resample=5)
    assert ((x_u.mean(0) - mean) / std).abs().max() < 0.3  # Monte Carlo error: 0.02 standard deviations
    torch.testing.assert_close(x_u.std(0), std, rtol=0.2, atol=0)
    assert ((completions(resample=1).mean(0) - mean) / std).abs().max() > 0.3  # without resampling it fails
    prior = MU[~known]  # a method that ignored the known pixels would fail by far more
    assert ((prior - mean) / std).abs().max() > 3


def test_repaint_schedule_redoes_each_block_r_times():
    assert repaint_schedule(4, 1, 1) == [0, 1, 2, 3, 4]
    assert repaint_schedule(4, 2, 2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4]
    path = repaint_schedule(50, 5, 5)
    moves = [b - a for a, b in zip(path, path[1:], strict=False)]
    assert path[0] == 0 and path[-1] == 50 and set(moves) == {1, -1}
    assert moves.count(1) == 50 + 10 * 4 * 5  # model evaluations: each of 10 blocks of 5 steps 4 more times
    assert len(repaint_schedule(7, 5, 3)) - 1 == 7 + 2 * 2 * 5  # the top 2 steps once, the last 5 three times


def test_slerp_keeps_the_norm_and_hits_both_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    b = b * (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1))[:, None, None, None]  # equal norms
    path = slerp(a, b, [0.0, 0.25, 0.5, 0.9, 1.0])
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path.flatten(2).norm(dim=2), a.flatten(1).norm(dim=1).expand(5, 3))
    midpoint = (a + b) / 2  # a straight line cuts inside the sphere
    assert (midpoint.flatten(1).norm(dim=1) < 0.8 * a.flatten(1).norm(dim=1)).all()
    torch.testing.assert_close(slerp(a, a, [0.3])[0], a)  # parallel ends: no division by sin(0)


# ----------------------------------------------------------------------------- on a tiny run


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run[1], torch.device("cpu"))


@pytest.fixture(scope="module")
def digits(data_dir):
    return as_unit(load_mnist(data_dir, "test")[0][:3])  # (3, 1, 28, 28) in [0, 1]


def in_8_bits(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round()


def test_inpainting_keeps_the_known_pixels_and_nothing_missing_returns_the_input(run, digits):
    left = parse_mask("left")
    out = inpaint(run, digits, left, n=2, steps=6, jumps=2, resample=2, seed=1)
    assert out.shape == (3, 2, 1, 28, 28)
    known = (~left).expand(3, 2, 1, 28, 28)
    assert torch.equal(in_8_bits(out)[known], in_8_bits(digits[:, None].expand_as(out))[known])
    assert not torch.equal(in_8_bits(out)[~known], in_8_bits(digits[:, None].expand_as(out))[~known])
    whole = inpaint(run, digits, torch.zeros(28, 28, dtype=torch.bool), n=2, steps=6, jumps=2, resample=2)
    assert torch.equal(in_8_bits(whole), in_8_bits(digits[:, None].expand_as(whole)))
    again = inpaint(run, digits, left, SamplingConfig(steps=6, seed=1), n=2, jumps=2, resample=2)
    assert torch.equal(again, out)  # the same seed, the same completions


def test_cpu_sampling_runs_channels_last_copies_and_leaves_the_run_alone(run, monkeypatch):
    # On the CPU the sampling networks are channels-last copies (faster oneDNN convolutions); the
    # run's own weights keep their layout, and the samples agree with NCHW's to float rounding.
    monkeypatch.delenv("MNISTDIFF_CHANNELS_LAST", raising=False)
    settings = SamplingConfig(steps=3, seed=1)
    model, guide = networks_for(run, settings)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert model is not run.model and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in run.model.parameters())
    fast = generate(run, 3, settings)
    monkeypatch.setenv("MNISTDIFF_CHANNELS_LAST", "0")
    assert networks_for(run, settings)[0] is run.model  # the user's switch: the run's network as it is
    torch.testing.assert_close(fast, generate(run, 3, settings), atol=1e-4, rtol=0)


def test_inpainting_with_everything_missing_is_ddim_eta_1_sampling(run, digits):
    # The same shapes, batches and kernels as generate: equal bit for bit (STYLE.md, 13). Asked
    # for cluster guidance, inpainting draws clusters as generate does.
    guided = Guidance(clusters=1.6)
    out = inpaint(
        run, digits[:2], torch.ones(28, 28, dtype=torch.bool), n=2, steps=6, resample=1, seed=3, guidance=guided
    )
    plain = generate(run, 4, SamplingConfig(sampler="ddim", eta=1.0, steps=6, spacing=1.0, seed=3, guidance=guided))
    assert torch.equal(out.reshape(4, 1, 28, 28), plain)


def test_inpainting_a_clustered_run_lets_the_visible_pixels_choose_the_digit(run, digits, monkeypatch):
    # By default no cluster is drawn: the null label, no cluster guidance (a drawn cluster fights
    # the visible part); a cluster-guidance scale asked for draws clusters as sample does.
    assert run.clustered and inpaint_settings(run).guidance.clusters == 1.0
    assert inpaint_settings(run, guidance=Guidance(clusters=2.0)).guidance.clusters == 2.0
    seen, real = [], editing_module.denoiser_for

    def spy(run, settings, labels, networks):
        seen.append(labels)
        return real(run, settings, labels, networks)

    monkeypatch.setattr(editing_module, "denoiser_for", spy)
    missing = parse_mask("right")
    inpaint(run, digits[:2], missing, steps=2, resample=1)
    inpaint(run, digits[:2], missing, steps=2, resample=1, guidance=Guidance(clusters=1.6))
    assert seen[0] is None and seen[1] is not None and len(seen[1]) == 2


def test_matched_clusters_come_from_the_training_digits_that_agree(run, digits, data_dir, monkeypatch):
    # Every training image in cluster 7: every completion is guided towards 7, at sample's scale.
    k = run.cfg.train.clusters
    train = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seen, real = [], editing_module.denoiser_for

    def spy(run, settings, labels, networks):
        seen.append((labels, settings.guidance.clusters))
        return real(run, settings, labels, networks)

    monkeypatch.setattr(editing_module, "denoiser_for", spy)
    missing = parse_mask("right")
    out = inpaint(
        run, digits[:2], missing, n=2, steps=2, resample=1, match=ClusterMatcher(train, torch.full((20,), 7), k)
    )
    assert seen[0][0].tolist() == [7, 7, 7, 7] and seen[0][1] == 1.6
    assert torch.equal(in_8_bits(out[:, :, :, :, :14]), in_8_bits(digits[:2, None, :, :, :14].expand(2, 2, 1, 28, 14)))
    matcher = run.cluster_matcher(data_dir)  # the run's own: the 512 training digits of data_dir, k clusters
    assert (len(matcher.assign), matcher.k) == (512, k)
    with pytest.raises(UserError, match="--digit needs a class-conditional run"):
        inpaint(run, digits[:1], missing, steps=2, resample=1, digit=3, match=matcher)
    with pytest.raises(UserError, match="does not fit run"):
        inpaint(run, digits[:1], missing, steps=2, resample=1, match=ClusterMatcher(train, torch.zeros(20), k + 1))


def test_matched_clusters_take_20_steps_and_one_walk_unless_told(run, digits, monkeypatch):
    # The measured defaults (config.INPAINT_MATCHED_STEPS and _RESAMPLE): a matched cluster already
    # agrees with the visible part; without one, DDIM's 50 steps (at most T) and r = 5.
    k, top = run.cfg.train.clusters, run.schedule.num_timesteps
    train = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    matcher = ClusterMatcher(train, torch.full((20,), 7), k)
    walks, real = [], editing_module.repaint

    def spy(*args, steps, resample, **kwargs):
        walks.append((steps, resample))
        return real(*args, steps=steps, resample=resample, **kwargs)

    monkeypatch.setattr(editing_module, "repaint", spy)
    missing = parse_mask("right")
    inpaint(run, digits[:1], missing, match=matcher)
    inpaint(run, digits[:1], missing, steps=4, resample=2, match=matcher)
    inpaint(run, digits[:1], missing)
    assert walks == [(min(20, top), 1), (4, 2), (min(50, top), 5)]
    assert inpaint_settings(run, matched=True).steps == min(20, top) and inpaint_settings(run).steps == min(50, top)


def test_interpolation_starts_and_ends_at_its_ends_samples(run, digits):
    ddim = dict(sampler="ddim", steps=6)
    for seed, frame in ((5, 0), (9, -1)):  # a clustered run's one cluster is drawn with --seed, as sample does
        walk = interpolate(run, 5, 9, frames=4, seed=seed, **ddim)
        alone = generate(run, 1, SamplingConfig(seed=seed, **ddim))
        torch.testing.assert_close(walk[frame], alone[0], atol=1e-5, rtol=0)  # batches of 4 and of 1
    walk = interpolate(run, digits[0], digits[1], frames=3, **ddim)
    for end, frame in ((digits[0], 0), (digits[1], -1)):
        torch.testing.assert_close(
            walk[frame], reconstruct(run, invert(run, end, **ddim), **ddim)[0], atol=1e-5, rtol=0
        )
    assert walk.shape == (3, 1, 28, 28)


def test_labels_follow_sample_digit_on_a_conditional_run_clusters_drawn_as_generate_draws(run):
    conditional = dataclasses.replace(
        run,
        cfg=dataclasses.replace(
            run.cfg,
            model=dataclasses.replace(run.cfg.model, num_classes=10),
            train=dataclasses.replace(run.cfg.train, clusters=0),
        ),
    )
    assert conditional.conditional and not conditional.clustered
    assert edit_labels(conditional, 3, 7, torch.Generator()).tolist() == [7, 7, 7]
    assert edit_labels(conditional, 3, None, torch.Generator()) is None  # the unconditional model, the null label
    drawn = edit_labels(run, 5, None, torch.Generator().manual_seed(4))
    assert torch.equal(drawn, draw_clusters(run.cluster_counts, 5, torch.Generator().manual_seed(4)))
    with pytest.raises(UserError, match="--digit needs a class-conditional run"):
        edit_labels(run, 1, 7, torch.Generator())


def test_inversion_of_a_digit_and_back_is_close(run, digits):
    noise = invert(run, digits, steps=20)
    assert noise.shape == digits.shape and 0.3 < noise.std() < 1.5
    assert (reconstruct(run, noise, steps=20) - digits).pow(2).mean() < 1e-3


def test_sdedit_at_strength_1_draws_from_noise_and_a_small_strength_stays_close(run, digits):
    a, b = (sdedit(run, d, 3, strength=1.0, seed=2) for d in digits[:2])
    plain = generate(run, 3, SamplingConfig(seed=2))  # draws the same noise, where SDEdit adds a trace of the drawing
    torch.testing.assert_close(a, plain, atol=1e-3, rtol=0)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    near = sdedit(run, digits[0], 3, strength=0.02, seed=2)
    assert (near - digits[0]).abs().mean() < 0.05 < (a - digits[0]).abs().mean()
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match=r"--strength must be in \(0, 1\]"):
            sdedit(run, digits[0], 1, strength=bad)


def test_the_python_api_loads_no_torch_until_used(run, capsys):
    code = "import sys, mnist_diffusion, mnist_diffusion.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    import mnist_diffusion
    from mnist_diffusion import inpaint as api_inpaint
    from mnist_diffusion import sample

    assert api_inpaint is inpaint and {"load_run", "sample", "interpolate", "invert"} <= set(dir(mnist_diffusion))
    assert sample(run, 2, steps=3).shape == (2, 1, 28, 28)
    assert capsys.readouterr() == ("", "")  # no printing unless asked
    with pytest.raises(AttributeError):
        mnist_diffusion.no_such_thing  # noqa: B018


# ----------------------------------------------------------------------------- pictures


def gif_frames(path: Path) -> int:
    with Image.open(path) as im:
        assert im.format == "GIF" and im.is_animated and im.info["loop"] == 0
        return im.n_frames


def test_a_gif_has_a_frame_per_moment_even_equal_ones_and_the_same_bytes(tmp_path):
    frames = torch.zeros(6, 2, 1, 28, 28)  # six equal moments: Pillow would merge them
    save_gif(frames, tmp_path / "a.gif")
    save_gif(frames, tmp_path / "b.gif")
    assert gif_frames(tmp_path / "a.gif") == 6
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()


def test_a_drawing_is_resized_and_inverted_with_a_notice(tmp_path):
    canvas = np.full((84, 56), 255, np.uint8)  # black ink on white paper, not 28x28
    canvas[20:60, 25:31] = 0
    Image.fromarray(canvas).save(tmp_path / "one.png")
    notes = []
    x = read_digit(tmp_path / "one.png", notes.append)
    assert x.shape == (1, 28, 28) and x.max() > 0.9 and x.mean() < 0.2  # light on dark
    assert any("inverted" in n for n in notes) and any("56x84 pixels, resized to 28x28" in n for n in notes)


def test_masks():
    assert parse_mask("left")[..., :, :14].all() and not parse_mask("left")[..., :, 14:].any()
    assert parse_mask("bottom")[..., 14:, :].all() and parse_mask("center").sum() == 14 * 14
    share = parse_mask("random:0.3", seed=1).float().mean()
    assert 0.2 < share < 0.4 and torch.equal(parse_mask("random:0.3", seed=1), parse_mask("random:0.3", seed=1))


# ----------------------------------------------------------------------------- the commands


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.mark.parametrize("command", ["inpaint", "interpolate", "invert", "sample"])
def test_help_has_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example: mnistdiff" in result.output and "--seed" in result.output
    assert command != "sample" or "--init" in result.output


@pytest.fixture(scope="module")
def where(tiny_run, data_dir):
    """The flags that point a command at the tiny run and the fake MNIST."""
    return ["--artifacts-dir", tiny_run[0], "--data-dir", data_dir]


@pytest.fixture(scope="module")
def cli(where):
    return [*where, "--steps", 5]


def test_inpaint_command_writes_the_same_grid_for_the_same_seed(cli, tmp_path):
    runs = []
    for name in ("a", "b"):
        out, tensor = tmp_path / f"{name}.png", tmp_path / f"{name}.safetensors"
        result = invoke(
            "inpaint",
            *cli,
            "--test-index",
            "0,5",
            "--mask",
            "top",
            "-n",
            3,
            "--jumps",
            2,
            "--resample",
            2,
            "-o",
            out,
            "--save-tensor",
            tensor,
        )
        assert result.exit_code == 0, result.output
        runs.append((out.read_bytes(), tensor.read_bytes()))
    assert runs[0] == runs[1]
    assert Image.open(tmp_path / "a.png").size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))  # a row per digit, 2 + n tiles
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        assert f.get_tensor("samples").shape == (6, 1, 28, 28) and f.get_tensor("missing").shape == (2, 1, 28, 28)
        assert json.loads(f.metadata()["sampling"])["sampler"] == "ddim"
        assert json.loads(f.metadata()["inpainting"]) == {
            "jumps": 2,
            "resample": 2,
            "n": 3,
            "digit": None,
            "match_clusters": True,  # the default on a clustered run with its training digits at hand
        }


def test_interpolate_command_as_a_gif_and_a_strip(cli, tmp_path):
    for name in ("walk.gif", "again.gif"):
        result = invoke("interpolate", *cli, "--frames", 5, "--seeds", "2,7", "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
    assert gif_frames(tmp_path / "walk.gif") == 5
    assert (tmp_path / "walk.gif").read_bytes() == (tmp_path / "again.gif").read_bytes()
    result = invoke("interpolate", *cli, "--test-index", "3,8", "--frames", 4, "-o", tmp_path / "walk.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "walk.png").size == (2 * (4 * 30 + 2), 2 * 32)


def test_invert_command_prints_the_error_per_step_count(where, tmp_path):
    result = invoke("invert", *where, "--test-index", "0,1", "--steps", "10,4", "-o", tmp_path / "inv.png")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    rows = [line for line in lines if line and line[0] in ("4", "10")]
    assert [r[0] for r in rows] == ["4", "10"] and float(rows[0][2]) < float(rows[1][2])  # PSNR grows with steps
    assert Image.open(tmp_path / "inv.png").size == (2 * (3 * 30 + 2), 2 * (2 * 30 + 2))


def test_sample_from_a_drawing_and_animated_trajectories(tiny_run, data_dir, tmp_path):
    drawing = tmp_path / "seven.png"
    pixels = np.zeros((28, 28), np.uint8)
    pixels[5:8, 6:22], pixels[8:24, 18:21] = 255, 255
    Image.fromarray(pixels).save(drawing)
    artifacts = ["--artifacts-dir", tiny_run[0]]
    result = invoke(
        "sample",
        *artifacts,
        "--init",
        drawing,
        "--strength",
        0.9,
        "-n",
        4,
        "--steps",
        10,
        "-o",
        tmp_path / "s.png",
        "--trajectory",
        tmp_path / "sd.gif",
    )
    assert result.exit_code == 0, result.output
    below = [t for t in spaced_timesteps(50, 10, SamplingConfig.DEFAULT_SPACING) if t < 44]  # t = 0.9 T - 1
    assert gif_frames(tmp_path / "sd.gif") == 1 + len(below) < 10
    result = invoke(
        "sample", *artifacts, "-n", 4, "--steps", 10, "-o", tmp_path / "g.png", "--trajectory", tmp_path / "traj.gif"
    )
    assert result.exit_code == 0, result.output
    assert gif_frames(tmp_path / "traj.gif") == 10
    result = invoke(
        "visualize-forward",
        "--data-dir",
        data_dir,
        "--timesteps",
        50,
        "--digits",
        3,
        "--columns",
        7,
        "-o",
        tmp_path / "fwd.gif",
    )
    assert result.exit_code == 0, result.output
    assert gif_frames(tmp_path / "fwd.gif") == 7


def test_one_line_errors(where, cli, tiny_run, tmp_path):
    wide, colour, empty = tmp_path / "wide.png", tmp_path / "colour.png", tmp_path / "empty.png"
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(wide)
    Image.fromarray(np.dstack([np.full((28, 28), v, np.uint8) for v in (200, 0, 0)])).save(colour)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(empty)
    out = ["-o", tmp_path / "x.png"]
    cases = [
        (("inpaint", *cli, "--test-index", 0, "--mask", wide, *out), "must be 28x28"),
        (("inpaint", *cli, "--image", colour, *out), "a colour image"),
        (("inpaint", *cli, "--image", empty, *out), "an empty image"),
        (("inpaint", *cli, "--test-index", "3,128", *out), "test digit 128 is out of range"),
        (("inpaint", *cli, "--test-index", "3,x", *out), "--test-index takes comma-separated"),
        (("inpaint", *cli, "--test-index", 3, "--mask", "random:2", *out), "--mask random:P"),
        (("inpaint", *cli, *out), "--image PATH"),
        (("inpaint", *cli, "--test-index", 3, "--digit", 7, *out), "--digit needs a class-conditional run"),
        (("sample", "--artifacts-dir", tiny_run[0], "--init", wide, "--strength", 1.5, *out), "--strength must be"),
        (("sample", "--artifacts-dir", tiny_run[0], "--init", wide, "--strength", 0, *out), "--strength must be"),
        (("sample", "--artifacts-dir", tiny_run[0], "--strength", 0.5, *out), "--strength needs --init"),
        (("interpolate", *cli, "--frames", 1, *out), "--frames must be at least 2"),
        (("interpolate", *cli, "--test-index", "1,2,3", *out), "two ends"),
        (("interpolate", *cli, "--sampler", "ddpm", *out), "ddim or dpmpp-2m"),
        (("invert", *where, "--test-index", 0, "--steps", "20,,50", *out), "--steps takes"),
        (("invert", *where, "--test-index", 0, "--steps", "0", *out), "--steps takes"),
        (("invert", *where, "--test-index", 0, "--steps", "100", *out), "between 1 and the run's 50"),
    ]
    for args, needle in cases:
        assert_one_line_error(invoke(*args), needle)
