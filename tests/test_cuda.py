"""The CUDA-graph paths on a real GPU: skipped without one (benchmarks/gpu_check.sh runs them).
The captured training step must compute what the step on the device computes eagerly, resume
exactly, and graphed sampling must draw what eager sampling draws."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from mnist_diffusion.config import SamplingConfig
from mnist_diffusion.runs.loader import load_run
from mnist_diffusion.runs.store import resolve_run
from mnist_diffusion.sampling.generate import generate
from mnist_diffusion.training.plan import plan_resume
from mnist_diffusion.training.trainer import Trainer, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def device_config(**train):
    cfg = tiny_config(**train)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, step_on_device=True))


def test_the_captured_step_computes_the_eager_device_step(tmp_path, data_dir):
    from mnist_diffusion.training.graphs import DeviceStep, GraphStep

    def stepper(name, graphs):
        t = Trainer(
            device_config(max_steps=8),
            data_dir=data_dir,
            artifacts_dir=tmp_path / name,
            run_name="t",
            device="cuda",
            progress=False,
            log=lambda m: None,
            cuda_graphs=False,
        )
        device_step = DeviceStep(t.learner, t.batches)
        device_step.set(0)
        return t.learner, device_step, GraphStep(device_step) if graphs else device_step

    eager, graphed = stepper("a", False), stepper("b", True)
    for step in range(8):
        for learner, device_step, call in (eager, graphed):
            device_step.prepare(step)
            call()
            learner.ema.updates += 1
    for a, b in ((eager[0].model, graphed[0].model), (eager[0].ema, graphed[0].ema)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_a_graph_run_resumes_exactly(tmp_path, data_dir):
    def run(cfg, where, **kw):
        return train(
            cfg,
            data_dir=data_dir,
            artifacts_dir=where,
            run_name="t",
            device="cuda",
            progress=False,
            log=lambda m: None,
            **kw,
        )

    straight = run(device_config(max_steps=12), tmp_path / "a").run_dir
    stop = threading.Event()
    half = run(device_config(max_steps=12), tmp_path / "b", stop=stop, on_step=lambda s: stop.set() if s == 5 else None)
    resumed = run(None, tmp_path / "b", resume=plan_resume(resolve_run(half.run_dir.name, tmp_path / "b")))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed.run_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_graphed_sampling_draws_what_eager_sampling_draws(tiny_run):
    run = load_run(tiny_run[1], torch.device("cuda"))
    settings = SamplingConfig(steps=4, batch_size=8, precision="fp32")
    eager = generate(run, 12, settings)
    graphed = generate(run, 12, dataclasses.replace(settings, cuda_graphs=True))
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)
