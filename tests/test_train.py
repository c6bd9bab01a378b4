"""The training loop: exact resume and its rules, Ctrl-C, the divergence guard, the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time

import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file

from mnist_diffusion.config import RunConfig, validate
from mnist_diffusion.data.clusters import load_clusters, pixel_clusters
from mnist_diffusion.data.mnist import load_mnist
from mnist_diffusion.errors import UserError
from mnist_diffusion.io import sha256_file
from mnist_diffusion.runs.checkpoint import flatten_optimizer
from mnist_diffusion.runs.store import load_config, resolve_run
from mnist_diffusion.sampling.outputs import end_of_run_grid
from mnist_diffusion.training import budget as budget_module
from mnist_diffusion.training import learner as learner_module
from mnist_diffusion.training import plan as plan_module
from mnist_diffusion.training import trainer as train_module
from mnist_diffusion.training.budget import TimeBudget, loop_pace, steps_that_fit
from mnist_diffusion.training.monitor import Monitor
from mnist_diffusion.training.plan import plan_resume
from mnist_diffusion.training.recipe import ema_decay_at, lr_at
from mnist_diffusion.training.trainer import Trainer, TrainingDiverged, train


def run(cfg, tmp_path, data_dir, *, resume=None, epochs=None, max_steps=None, **kw):
    """Train ``cfg`` into ``tmp_path/artifacts``, or resume the run ``resume`` there, as
    ``train --resume RUN [--epochs E] [--max-steps S]`` does."""
    artifacts = tmp_path / "artifacts"
    plan = None
    if resume is not None:
        plan = plan_resume(resolve_run(str(resume), artifacts), epochs=epochs, max_steps=max_steps)
    kw = {"run_name": "t", "progress": False, "log": lambda m: None, **kw}
    return train(cfg, data_dir=data_dir, artifacts_dir=artifacts, device="cpu", resume=plan, **kw)


class FakeClock:
    """A clock that stands still unless a test moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def folder_bytes(run_dir):
    """Every file of a run folder, hidden ones included, and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def all_finite(run_dir) -> bool:
    """Whether every floating-point tensor of every safetensors file in the folder is finite."""
    return all(
        torch.isfinite(v.float()).all()
        for path in run_dir.glob("*.safetensors")
        for v in load_file(path).values()
        if v.is_floating_point()
    )


def weights(run_dir, name="model.safetensors"):
    return load_file(run_dir / name)


def test_run_folder_contents(tmp_path, data_dir):
    result = run(tiny_config(max_steps=6), tmp_path, data_dir)
    files = {p.name for p in result.run_dir.iterdir()}
    expected = {
        "config.json",
        "model.safetensors",
        "checkpoint.safetensors",
        "checkpoint.json",
        "metrics.jsonl",
        "loss.png",
        "manifest.json",
    }
    assert expected <= files
    assert not [f for f in files if f.endswith(".tmp")]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    for name in expected - {"manifest.json"}:
        assert manifest["files"][name]["sha256"] == sha256_file(result.run_dir / name)
    assert (tmp_path / "artifacts" / "latest").read_text().strip() == result.run_dir.name
    assert result.run_dir.name == "00000-t" and result.step == 6


def test_resume_is_exact_and_a_longer_budget_makes_a_child_run(tmp_path, data_dir):
    straight = run(tiny_config(max_steps=16), tmp_path / "a", data_dir)
    half = run(tiny_config(max_steps=8), tmp_path / "b", data_dir)
    before = folder_bytes(half.run_dir)
    child = run(None, tmp_path / "b", data_dir, resume=half.run_dir.name, max_steps=16)
    assert child.run_dir != half.run_dir and child.run_dir.name == "00001-t" and child.step == 16
    assert folder_bytes(half.run_dir) == before  # the finished run keeps the result it was made for
    info = json.loads((child.run_dir / "run.json").read_text())
    assert info["parent"] == {"run": half.run_dir.name, "step": 8}
    assert json.loads((child.run_dir / "config.json").read_text())["train"]["max_steps"] == 16
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = weights(straight.run_dir, name), weights(child.run_dir, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    steps = [r["step"] for r in map(json.loads, (child.run_dir / "metrics.jsonl").read_text().splitlines())]
    assert steps == [8, 16, 16]  # the parent's history, then its own; the last line is "done"


def test_flagless_resume_of_an_interrupted_run_ends_where_a_straight_run_ends(tmp_path, data_dir):
    # saved with a non-default budget: 2 epochs of 32 steps, stopped early at 40
    cfg = dataclasses.replace(tiny_config(), train=dataclasses.replace(tiny_config().train, epochs=2, max_steps=40))
    stop = threading.Event()
    interrupted = run(cfg, tmp_path / "b", data_dir, stop=stop, on_step=lambda s: stop.set() if s == 5 else None)
    assert interrupted.interrupted and interrupted.step == 5
    assert not (interrupted.run_dir / "model.safetensors").exists()
    assert json.loads((interrupted.run_dir / "checkpoint.json").read_text())["step"] == 5
    resumed = run(None, tmp_path / "b", data_dir, resume=interrupted.run_dir)  # no budget flags
    assert resumed.run_dir == interrupted.run_dir and resumed.step == 40
    straight = run(cfg, tmp_path / "a", data_dir)
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed.run_dir / "config.json").read_text())["train"]["epochs"] == 2


def test_resume_keeps_saved_config_and_takes_only_the_budget(tmp_path, data_dir):
    first = run(tiny_config(max_steps=4, lr=1e-3), tmp_path, data_dir)
    child = run(None, tmp_path, data_dir, resume=first.run_dir.name, max_steps=6)
    saved = json.loads((child.run_dir / "config.json").read_text())
    assert saved["train"]["lr"] == 1e-3 and saved["train"]["max_steps"] == 6
    assert json.loads((first.run_dir / "config.json").read_text())["train"]["max_steps"] == 4
    assert json.loads((child.run_dir / "checkpoint.json").read_text())["step"] == 6


def test_a_finished_run_is_never_resumed_in_place(tmp_path, data_dir):
    first = run(tiny_config(max_steps=4), tmp_path, data_dir)
    artifacts = tmp_path / "artifacts"
    assert plan_resume(first.run_dir).action == "finished"
    assert plan_resume(first.run_dir, max_steps=4).action == "finished"  # the saved value: the same plan
    with pytest.raises(UserError, match="finished its plan"):
        run(None, tmp_path, data_dir, resume=first.run_dir.name)
    with pytest.raises(UserError, match="is at step 4, and the budget asked for ends at step 3"):
        run(None, tmp_path, data_dir, resume=first.run_dir.name, max_steps=3)
    assert [p.name for p in (artifacts / "runs").iterdir()] == [first.run_dir.name]


def poison(monkeypatch, bad_call: int, *, gradient_only: bool):
    """Make the loss of the ``bad_call``-th step NaN, or keep it finite and make its gradients
    infinite (``gradient_only``), as a blown-up update would."""

    class InfiniteGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("inf")

    real_loss, calls = learner_module.diffusion_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        if len(calls) != bad_call:
            return loss
        return InfiniteGradient.apply(loss) if gradient_only else loss * float("nan")

    monkeypatch.setattr(learner_module, "diffusion_loss", poisoned)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(plan_module, "CHECKPOINT_EVERY", 2)
    poison(monkeypatch, 5, gradient_only=False)
    with pytest.raises(TrainingDiverged, match="NaN or infinite at step 5"):
        run(tiny_config(max_steps=10), tmp_path, data_dir)
    (run_dir,) = (tmp_path / "artifacts" / "runs").iterdir()
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 4
    assert all_finite(run_dir) and not (run_dir / "model.safetensors").exists()


@pytest.mark.parametrize("check_every", [1, 50])  # the CPU reads the flag every step, a GPU at save points
def test_an_infinite_gradient_on_a_checkpoint_step_is_never_saved(tmp_path, data_dir, monkeypatch, check_every):
    monkeypatch.setattr(plan_module, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(train_module.Trainer, "check_every", property(lambda self: check_every))
    poison(monkeypatch, 8, gradient_only=True)  # the loss stays finite; the weights would not
    with pytest.raises(TrainingDiverged, match="at step 8"):
        run(tiny_config(max_steps=12), tmp_path, data_dir)
    (run_dir,) = (tmp_path / "artifacts" / "runs").iterdir()
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 4
    assert all_finite(run_dir)
    assert (
        sha256_file(run_dir / "checkpoint.safetensors")
        == json.loads((run_dir / "manifest.json").read_text())["files"]["checkpoint.safetensors"]["sha256"]
    )


def test_an_infinite_gradient_on_the_guide_step_writes_no_guide(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(train_module.Trainer, "check_every", property(lambda self: 50))  # as on a GPU
    poison(monkeypatch, 8, gradient_only=True)  # 32 steps per epoch, guide_at 0.25: the guide is step 8
    with pytest.raises(TrainingDiverged, match="at step 8"):
        run(tiny_config(max_steps=12, guide_at=0.25), tmp_path, data_dir)
    (run_dir,) = (tmp_path / "artifacts" / "runs").iterdir()
    assert not (run_dir / "guide.safetensors").exists() and all_finite(run_dir)


def test_run_folders_are_never_reused(tmp_path, data_dir):
    a = run(tiny_config(max_steps=1), tmp_path, data_dir).run_dir
    b = run(tiny_config(max_steps=1), tmp_path, data_dir).run_dir
    assert a != b and a.name.startswith("00000-") and b.name.startswith("00001-")


def test_a_step_is_forward_backward_then_update(tmp_path, data_dir):
    # The benchmarks time the two halves of a step apart (Trainer's public API): together they are the step.
    def trainer(name):
        return Trainer(
            tiny_config(max_steps=3),
            data_dir=data_dir,
            artifacts_dir=tmp_path / name,
            run_name="t",
            device="cpu",
            progress=False,
            log=lambda m: None,
        )

    whole, halves = trainer("a"), trainer("b")
    for i in range(3):
        batch = whole.batches.batch_for(i)
        loss = whole.learner.step(batch, i)
        assert torch.equal(halves.learner.forward_backward(batch), loss)
        halves.learner.update(i, loss)
    whole.close(), halves.close()

    def state(t):
        return {**t.model.state_dict(), **t.ema.state_dict(), **flatten_optimizer(t.opt)[0]}

    a, b = state(whole.learner), state(halves.learner)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.learner.ema.updates == halves.learner.ema.updates == 3


def test_lr_schedule_warmup_and_cosine():
    cfg = tiny_config(lr=1.0)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmup_steps=10, lr_schedule="cosine"))
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)


@pytest.mark.parametrize("gamma", [0.0, 3.0, 8.0, 16.0])
def test_ema_warmup_is_a_power_function_average_of_width_sigma_rel(gamma):
    """After n updates the EMA weighs step i's weights about as i^gamma: its width relative to n is
    EDM2's sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3)), whatever n is."""
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0.9999999, ema_gamma=gamma))
    sigma_rel = math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))
    for n in (5_000, 20_000):
        weights = torch.zeros(n + 1, dtype=torch.float64)  # weights[i]: share of the weights after step i
        weights[0] = 1.0  # the EMA starts as a copy of the initial weights
        for i in range(n):
            decay = ema_decay_at(i, cfg)
            weights *= decay
            weights[i + 1] = 1.0 - decay
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-9)
        steps = torch.arange(n + 1, dtype=torch.float64)
        mean = (weights * steps).sum()
        width = ((weights * (steps - mean) ** 2).sum().sqrt() / n).item()
        assert width == pytest.approx(sigma_rel, rel=0.01)


def test_ema_gamma_8_is_the_classic_warmup_and_ema_decay_caps_it():
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0.999, ema_warmup=True))
    assert cfg.train.ema_gamma == 8.0
    for n in (0, 1, 10, 1_000, 8_989):
        assert ema_decay_at(n, cfg) == pytest.approx((1 + n) / (10 + n), rel=1e-15)
    assert ema_decay_at(8_990, cfg) == pytest.approx(0.999) and ema_decay_at(50_000, cfg) == 0.999
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_warmup=False))
    assert ema_decay_at(0, off) == 0.999


@pytest.mark.parametrize("noise_levels", ["uniform", "log-normal"])
def test_each_steps_timesteps_come_from_its_own_seed_at_the_configs_noise_levels(tmp_path, data_dir, noise_levels):
    from mnist_diffusion.training.batches import step_generator

    cfg = tiny_config(max_steps=3)
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, noise_levels=noise_levels))
    t = Trainer(
        cfg, data_dir=data_dir, artifacts_dir=tmp_path, run_name="t", device="cpu", progress=False, log=lambda m: None
    )
    b, T = cfg.train.batch_size, cfg.diffusion.timesteps
    for step in (0, 7):
        g = step_generator(cfg.train.seed, step, 0, torch.device("cpu"))
        if noise_levels == "uniform":
            want = torch.randint(0, T, (b,), generator=g)
        else:
            want = t.learner.schedule.training_steps(torch.rand(b, generator=g))
        assert torch.equal(t.batches.batch_for(step).t, want)
    t.close()


def test_adam_beta2_reaches_the_optimizer_and_changes_the_step(tmp_path, data_dir):
    def weights(beta2):
        cfg = tiny_config(max_steps=2)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, adam_beta2=beta2))
        t = Trainer(
            cfg,
            data_dir=data_dir,
            artifacts_dir=tmp_path / str(beta2),
            run_name="t",
            device="cpu",
            progress=False,
            log=lambda m: None,
        )
        assert t.learner.opt.param_groups[0]["betas"] == (0.9, beta2)
        for step in range(2):
            t.learner.step(t.batches.batch_for(step), step)
        t.close()
        return t.learner.model.state_dict()

    a, b = weights(0.999), weights(0.9)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_guide_is_the_ema_at_guide_at_and_survives_resume(tmp_path, data_dir):
    # 32 steps per epoch; guide_at 0.25 of 1 epoch: the EMA weights after step 8
    cfg = tiny_config(max_steps=8, guide_at=0.25)
    at_8 = run(cfg, tmp_path / "a", data_dir).run_dir
    full = run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=0)), tmp_path / "b", data_dir)
    half = run(tiny_config(max_steps=12, guide_at=0.25), tmp_path / "c", data_dir)
    resumed = run(None, tmp_path / "c", data_dir, resume=half.run_dir.name, max_steps=0)
    guide = weights(at_8, "model.safetensors")
    for run_dir in (at_8, full.run_dir, resumed.run_dir):
        assert weights(run_dir, "guide.safetensors").keys() == guide.keys()
        for k, v in weights(run_dir, "guide.safetensors").items():
            assert torch.equal(v, guide[k]), k
    final = weights(full.run_dir)
    assert any(not torch.equal(final[k], guide[k]) for k in guide)
    assert "guide.safetensors" in json.loads((full.run_dir / "manifest.json").read_text())["files"]
    off = run(tiny_config(max_steps=10, guide_at=0.0), tmp_path / "d", data_dir).run_dir
    assert not (off / "guide.safetensors").exists()


def test_precision_flag_picks_the_arithmetic(tmp_path, data_dir):
    # which device gets which precision: tests/test_runtime.py; here, that the trainer follows it
    runs = {p: run(tiny_config(max_steps=3, precision=p), tmp_path / p, data_dir).run_dir for p in ("fp32", "bf16")}
    a, b = weights(runs["fp32"]), weights(runs["bf16"])
    assert any(not torch.equal(a[k], b[k]) for k in a)  # bf16 autocast is not fp32


def test_fp16_scales_the_loss_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
    # fp16 is for CUDA; the same code path runs on the CPU when the precision check lets it
    monkeypatch.setattr(learner_module, "autocast_dtype", lambda precision, device: torch.float16)
    straight = run(tiny_config(max_steps=6, precision="fp16"), tmp_path / "a", data_dir).run_dir
    meta = json.loads((straight / "checkpoint.json").read_text())
    assert meta["grad_scaler"]["scale"] > 0  # the loss scaler's state is part of the checkpoint
    stop = threading.Event()
    half = run(
        tiny_config(max_steps=6, precision="fp16"),
        tmp_path / "b",
        data_dir,
        stop=stop,
        on_step=lambda s: stop.set() if s == 3 else None,
    )
    resumed = run(None, tmp_path / "b", data_dir, resume=half.run_dir)
    a, b = weights(straight), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.undo()
    fp32 = weights(run(tiny_config(max_steps=6, precision="fp32"), tmp_path / "c", data_dir).run_dir)
    assert any(not torch.equal(a[k], fp32[k]) for k in a)  # it did run in fp16


def test_conditional_training_runs_and_samples_by_row(tmp_path, data_dir):
    cfg = tiny_config(max_steps=3)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=10))
    result = run(cfg, tmp_path, data_dir, on_finish=end_of_run_grid())
    grid = Image.open(result.run_dir / "samples.png")
    assert grid.size == (2 * (8 * 30 + 2), 2 * (10 * 30 + 2))  # a row of 8 per digit 0-9, scale 2
    assert "label_emb.weight" in weights(result.run_dir)
    assert not (result.run_dir / "guide.safetensors").exists()  # guided by the null label instead


def clustered_config(k: int = 4, **train) -> RunConfig:
    cfg = tiny_config(clusters=k, **train)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=k))


def test_clustered_run_learns_the_pixel_clusters_and_resumes_exactly(tmp_path, data_dir):
    # 32 steps per epoch; the guide is the EMA after step 8 (guide_at 0.25), as for unconditional runs
    straight = run(clustered_config(max_steps=16, guide_at=0.25), tmp_path / "a", data_dir).run_dir
    half = run(clustered_config(max_steps=8, guide_at=0.25), tmp_path / "b", data_dir).run_dir
    resumed = run(None, tmp_path / "b", data_dir, resume=half.name, max_steps=16).run_dir
    images, _ = load_mnist(data_dir, "train")
    assign, counts = load_clusters(straight, 4)
    assert torch.equal(assign, pixel_clusters(images, 4, seed=0))  # the trainer's labels: k-means, seeded
    assert counts.sum() == len(images) and (counts > 0).all()
    for name in ("model.safetensors", "guide.safetensors", "clusters.safetensors"):
        a, b = weights(straight, name), weights(resumed, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert "label_emb.weight" in weights(straight) and weights(straight)["label_emb.weight"].shape[0] == 5
    manifest = json.loads((straight / "manifest.json").read_text())["files"]
    assert "clusters.safetensors" in manifest


def test_clustered_run_needs_as_many_images_as_clusters(tmp_path, data_dir):
    with pytest.raises(UserError, match="600 clusters need at least 600 training images"):
        run(clustered_config(k=600, max_steps=1), tmp_path, data_dir)


def test_clusters_and_num_classes_must_agree():
    cfg = clustered_config(k=4)
    with pytest.raises(ValueError, match="num_classes must be"):
        validate(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=10)))
    with pytest.raises(ValueError, match="clusters must not be negative"):
        validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, clusters=-1)))


def test_a_time_budget_plans_steps_that_a_plain_run_repeats_bit_for_bit(tmp_path, data_dir):
    lines = []
    budgeted = run(tiny_config(epochs=3), tmp_path / "a", data_dir, time_budget=4.0, log=lines.append).run_dir
    cfg = load_config(budgeted)
    info = json.loads((budgeted / "run.json").read_text())["time_budget"]
    assert cfg.train.steps == info["planned_steps"] > 0 and info["seconds"] == 4.0
    assert any(f"--steps {cfg.train.steps}" in line for line in lines)
    # The plan (and where the budget ended it, if it did) is in config.json: a run of that config
    # on any machine, without a budget, trains the same weights.
    again = run(cfg, tmp_path / "b", data_dir).run_dir
    a, b = weights(budgeted), weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


class Budget(TimeBudget):
    """A time budget whose scratch steps take ``step_seconds`` each, whose replan comes after
    ``replan_after`` steps (0: never), and which is spent after ``spent_after`` checks (None: by
    its clock)."""

    def __init__(self, seconds, *, step_seconds=None, spent_after=None, replan_after=200, **kw):
        super().__init__(seconds, replan_after=replan_after, **kw)
        self.fixed_step_seconds, self.spent_after = step_seconds, spent_after
        self.checks, self.ages, self.paces = 0, [], []

    def step_seconds(self, advance, first):
        measured = super().step_seconds(advance, first)
        return measured if self.fixed_step_seconds is None else self.fixed_step_seconds

    def spent(self):
        self.checks += 1
        self.ages.append(self.elapsed())
        return super().spent() if self.spent_after is None else self.checks >= self.spent_after

    def replan(self, step, loop_seconds):
        planned, pace = super().replan(step, loop_seconds)
        self.paces.append((step, pace))
        return planned, pace


def test_a_budget_plans_again_from_its_own_pace_within_warm_up(tmp_path, data_dir):
    """The scratch steps overrate the pace 100-fold here: after warm-up's steps the run plans again
    from its own loop, and the new plan, recorded, still repeats bit for bit without a budget.
    No guide here: a guided run keeps its first plan when the new one would put the guide behind
    it, which on a loaded machine's slow first steps makes this test's outcome depend on the load.
    The budget is spent after 12 steps, not by the clock: a loaded machine's 3 seconds once ended
    the run inside warm-up, before its plan was made again."""
    lines = []
    budgeted = run(
        tiny_config(epochs=50, guide_at=0.0),
        tmp_path / "a",
        data_dir,
        time_budget=Budget(30.0, step_seconds=1e-4, spent_after=12),
        log=lines.append,
    ).run_dir
    info = json.loads((budgeted / "run.json").read_text())["time_budget"]
    cfg = load_config(budgeted)
    assert info["measured_over_steps"] == cfg.train.warmup_steps == 4
    assert cfg.train.steps == info["planned_steps"] < int(30.0 * 0.97 / 1e-4)
    assert any(f"over the first 4 steps; `mnistdiff train --steps {cfg.train.steps}`" in line for line in lines)
    again = run(cfg, tmp_path / "b", data_dir).run_dir  # where the budget ended it, if it did, is in cfg too
    a, b = weights(budgeted), weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_spent_budget_ends_the_run_and_records_where(tmp_path, data_dir):
    budget = Budget(60.0, step_seconds=0.01, spent_after=5, replan_after=0, clock=FakeClock())  # spent after step 5
    result = run(tiny_config(epochs=3), tmp_path, data_dir, time_budget=budget)
    cfg = load_config(result.run_dir)
    assert result.step == 5 and cfg.train.max_steps == 5 and cfg.train.steps == int(60 * 0.97 / 0.01)
    assert (result.run_dir / "model.safetensors").is_file()  # finished, not interrupted


class FixedCost(Monitor):
    """A monitor that does nothing and reports a fixed cost: ``seconds`` a step, on average, or
    with ``every`` as one event every ``every`` steps."""

    def __init__(self, seconds: float, every: int = 1):
        self.seconds, self.every = seconds, every

    def seconds_per_step(self, trainer):
        return self.seconds


def budget_run_of_three_steps(tmp_path, data_dir, monitor, **kwargs):
    """A 60 s budget planned from scratch steps of 0.01 s and ``monitor``, that runs out after 3 steps."""
    budget = Budget(60.0, step_seconds=0.01, spent_after=3, replan_after=0, clock=FakeClock())
    return run(tiny_config(epochs=3), tmp_path, data_dir, time_budget=budget, monitors=[monitor], **kwargs)


def test_a_budget_leaves_the_monitors_their_measured_time(tmp_path, data_dir):
    lines = []  # the monitor costs as much as a training step, on average
    result = budget_run_of_three_steps(tmp_path, data_dir, FixedCost(0.01), log=lines.append)
    plan = json.loads((result.run_dir / "run.json").read_text())["time_budget"]
    assert load_config(result.run_dir).train.steps == plan["planned_steps"] == int(60 * 0.97 / 0.02)
    assert plan["monitor_seconds_per_step"] == 0.01
    assert any("watching the run takes 50% of it" in line for line in lines)


def test_a_budget_counts_the_time_it_spends_planning(tmp_path, data_dir):
    # Measuring the monitors (a FID of --eval-every, say) takes time: the budget's clock runs from
    # before it, and the plan fits what is left, so the run still ends when the budget does.
    clock = FakeClock()

    class SlowToMeasure(Monitor):
        def seconds_per_step(self, trainer):
            clock.now += 1.5  # measuring it takes 1.5 s on the budget's clock
            return 0.01

    budget = Budget(10.0, step_seconds=0.01, spent_after=3, replan_after=0, clock=clock)
    lines = []
    result = run(
        tiny_config(epochs=3), tmp_path, data_dir, time_budget=budget, monitors=[SlowToMeasure()], log=lines.append
    )
    clock_ages = budget.ages
    plan = json.loads((result.run_dir / "run.json").read_text())["time_budget"]
    assert plan["planning_seconds"] == 1.5
    assert abs(plan["planned_steps"] - int((10 * 0.97 - plan["planning_seconds"]) / 0.02)) <= 1  # not 485
    assert clock_ages[0] >= 1.0  # the clock started before the measuring
    assert any("after 2 s of measuring" in line for line in lines), lines


def test_the_steps_that_fit_a_budget_count_each_monitor_event_where_it_falls():
    assert steps_that_fit(0, 10.0, 0.1, []) in (99, 100)  # 100 steps of 0.1 s, give or take rounding
    # A 40 s FID after every 200th step of 0.11 s: one FID fits, two do not (400 steps would take
    # 124 s). Spread over the steps, its cost would allow only 116.4 / 0.31 = 375.
    assert steps_that_fit(0, 116.4, 0.11, [(200, 40.0)]) == 399
    assert steps_that_fit(150, 50.0, 0.1, [(200, 40.0)]) == 100  # from step 150: the FID at 200 is 50 steps away
    assert steps_that_fit(0, 1.0, 0.1, [(1, 5.0)]) == 1 and steps_that_fit(0, -3.0, 0.1, []) == 1  # at least one


def test_a_budget_plans_its_monitors_events_where_they_fall(tmp_path, data_dir):
    result = budget_run_of_three_steps(tmp_path, data_dir, FixedCost(0.5, every=10))  # 5 s an event
    # 58.2 s: 119 steps take 1.19 s and reach 11 events (55 s); 120 would reach a 12th
    assert load_config(result.run_dir).train.steps == 119


def test_a_budget_plans_again_from_the_steps_pace_without_the_monitors_time(tmp_path, data_dir):
    class SlowAtStepTwo(Monitor):
        def after_step(self, trainer, step):
            if step == 2:
                time.sleep(1.0)

    budget = Budget(60.0)
    run(
        tiny_config(epochs=1, max_steps=6, guide_at=0.0),
        tmp_path,
        data_dir,
        time_budget=budget,
        monitors=[SlowAtStepTwo()],
    )
    paces = budget.paces
    assert len(paces) == 1 and paces[0][0] == 4  # at the end of warm-up
    assert paces[0][1] < 0.2  # the second of sleep would make it at least 0.25 s a step


def test_the_loop_pace_a_budget_plans_from_is_the_slower_of_the_whole_and_its_second_half():
    assert loop_pace(200, 20.0, 100, 10.0) == pytest.approx(0.1)  # steady
    assert loop_pace(200, 24.0, 100, 10.0) == pytest.approx(0.14)  # slowing down: the second half's
    assert loop_pace(200, 24.0, 100, 14.0) == pytest.approx(0.12)  # a slow start: the whole mean
    assert loop_pace(200, 24.0, -1, 0.0) == pytest.approx(0.12)  # no halfway mark


def test_train_says_how_long_the_rest_will_take(tmp_path, data_dir):
    lines = []
    run(tiny_config(max_steps=30), tmp_path, data_dir, log=lines.append, progress=True)
    assert any("steps to go: about" in line and "images/s" in line and "of the matrix rate" in line for line in lines)
    assert any("a training step is" in line and "MFLOP per image" in line for line in lines)


def test_durations_for_time_budget():
    from mnist_diffusion.cli.train import parse_duration

    assert [parse_duration(t) for t in ("10m", "90s", "1h30m", "1.5h", "45", "2min")] == [600, 90, 5400, 5400, 45, 120]
    for bad in ("", "soon", "0s", "10x", "-5m"):
        with pytest.raises(UserError, match="--time-budget"):
            parse_duration(bad)


def test_a_resumed_run_compiles_as_the_run_did(tmp_path, data_dir, monkeypatch):
    compiled = []
    monkeypatch.setattr(learner_module, "compile_network", lambda net, device, dtype: compiled.append(net) or net)
    short = run(tiny_config(max_steps=2), tmp_path / "a", data_dir)  # 32 steps planned: below the default's minimum
    assert not compiled and json.loads((short.run_dir / "checkpoint.json").read_text())["compiled"] is False
    half = run(tiny_config(max_steps=2), tmp_path / "b", data_dir, compile=True)
    assert len(compiled) == 1 and json.loads((half.run_dir / "checkpoint.json").read_text())["compiled"] is True
    for source, flag in ((half, None), (short, None), (half, False)):
        resumed = Trainer(
            None,
            data_dir=data_dir,
            artifacts_dir=source.run_dir.parent.parent,
            run_name=None,
            device="cpu",
            progress=False,
            log=lambda m: None,
            compile=flag,
            resume=plan_resume(source.run_dir, max_steps=4),
        )
        resumed.close()
        assert resumed.learner.compiled is (source is half and flag is None)
    assert len(compiled) == 2


def test_a_budget_run_names_the_compile_flag_its_plan_needs_to_repeat_it(tmp_path, data_dir, monkeypatch):
    # A budget run trains eagerly; where the default would compile its planned steps (patched in:
    # any plan), the `--steps N` it prints says --no-compile, so the repeat computes the same floats.
    monkeypatch.setattr(budget_module, "compile_by_default", lambda device, dtype, steps: "measured to pay")
    monkeypatch.setattr(learner_module, "compile_by_default", lambda device, dtype, steps: "measured to pay")
    lines = []
    result = run(tiny_config(epochs=3), tmp_path, data_dir, time_budget=2.0, log=lines.append)
    steps = load_config(result.run_dir).train.steps
    assert any(f"--steps {steps} --no-compile`" in line for line in lines), lines
    assert json.loads((result.run_dir / "checkpoint.json").read_text())["compiled"] is False
