"""The step on the device (mnist_diffusion.training.graphs), the part of the CUDA-graph path that
runs the same on the CPU: its counter-hashed random numbers, its recipe against the eager one,
exact resume, and no host sync inside a step. Capturing and replaying the graph needs a CUDA GPU
(benchmarks/gpu_check.sh)."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from mnist_diffusion.config import RunConfig
from mnist_diffusion.errors import UserError
from mnist_diffusion.runs.store import resolve_run
from mnist_diffusion.sampling.graphed import GraphedForward
from mnist_diffusion.training.graphs import DeviceStep, counter_normal, counter_uniform, mix32, step_key
from mnist_diffusion.training.plan import plan_resume
from mnist_diffusion.training.recipe import lr_at
from mnist_diffusion.training.trainer import Trainer, train


def reference_mix32(x: int) -> int:
    """lowbias32 in plain Python integers: the independent reference."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def device_config(**train) -> RunConfig:
    cfg = tiny_config(**train)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, step_on_device=True))


def trainer(cfg, tmp_path, data_dir, name="t"):
    return Trainer(
        cfg,
        data_dir=data_dir,
        artifacts_dir=tmp_path / name,
        run_name="t",
        device="cpu",
        progress=False,
        log=lambda m: None,
    )


def test_the_hash_matches_its_reference_and_is_a_bijection():
    rng = np.random.default_rng(0)
    xs = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, *rng.integers(0, 2**32, 2000).tolist()]
    ours = mix32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert ours == [reference_mix32(x) for x in xs]
    block = mix32(torch.arange(200_000, dtype=torch.int64))
    assert len(torch.unique(block)) == 200_000 and int(block.max()) < 2**32 and int(block.min()) >= 0


def test_counter_numbers_are_a_function_of_key_stream_and_index():
    key = step_key(0, torch.tensor(5), 0)
    u = counter_uniform(key, 1, 1000)
    assert torch.equal(u[:10], counter_uniform(key, 1, 10))  # element i does not depend on how many
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert not torch.equal(u, counter_uniform(key, 2, 1000))  # another stream
    assert not torch.equal(u, counter_uniform(step_key(0, torch.tensor(6), 0), 1, 1000))  # another step
    assert not torch.equal(u, counter_uniform(step_key(0, torch.tensor(5), 1), 1, 1000))  # another rank
    assert not torch.equal(u, counter_uniform(step_key(1, torch.tensor(5), 0), 1, 1000))  # another seed
    big = counter_uniform(key, 1, 1_000_000)
    assert abs(float(big.mean()) - 0.5) < 0.002 and abs(float(big.var()) - 1 / 12) < 0.001
    z = counter_normal(key, 2, (1000, 1000))
    assert abs(float(z.mean())) < 0.005 and abs(float(z.std()) - 1) < 0.005
    assert abs(float((z**4).mean()) - 3) < 0.05  # a normal's fourth moment


@pytest.mark.parametrize("noise_levels", ["uniform", "log-normal"])
def test_a_device_step_is_the_eager_recipe_on_the_same_batch(tmp_path, data_dir, noise_levels):
    def levels(cfg):
        return dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, noise_levels=noise_levels))

    on_device, eager = (
        trainer(levels(device_config(max_steps=4)), tmp_path, data_dir, "a"),
        trainer(levels(tiny_config(max_steps=4)), tmp_path, data_dir, "b"),
    )
    batches = DeviceStep(on_device.learner, on_device.batches)  # the batch a step on the device takes
    for step in range(6):  # past the 4 warm-up steps: the learning rate's both phases
        batches.set(step)
        batch = batches.batch()
        u = counter_uniform(step_key(on_device.cfg.train.seed, batches.step, 0), 1, len(batch.t))
        assert torch.equal(batch.t, on_device.learner.schedule.training_steps(u))  # the config's noise levels
        on_device.advance(step)
        eager.learner.step(batch, step)
    # the same operations in the same order on the CPU: the same bits
    for a, b in ((on_device.learner.model, eager.learner.model), (on_device.learner.ema, eager.learner.ema)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    lr = on_device.learner.opt.param_groups[0]["lr"]  # the device tensor the step reads
    assert float(lr) == lr_at(5, eager.cfg, eager.plan.total_steps)


def test_a_run_on_the_device_resumes_exactly(tmp_path, data_dir):
    def run(cfg, where, **kw):
        return train(
            cfg,
            data_dir=data_dir,
            artifacts_dir=where,
            run_name="t",
            device="cpu",
            progress=False,
            log=lambda m: None,
            **kw,
        )

    cfg = device_config(max_steps=12)
    straight = run(cfg, tmp_path / "a").run_dir
    stop = threading.Event()
    half = run(cfg, tmp_path / "b", stop=stop, on_step=lambda s: stop.set() if s == 5 else None)
    assert half.interrupted and json.loads((half.run_dir / "config.json").read_text())["train"]["step_on_device"]
    resumed = run(None, tmp_path / "b", resume=plan_resume(resolve_run(half.run_dir.name, tmp_path / "b")))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed.run_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    eager = load_file(run(tiny_config(max_steps=12), tmp_path / "c").run_dir / "model.safetensors")
    assert any(not torch.equal(a[k], eager[k]) for k in a)  # its own noise: not the eager run's numbers


def test_no_host_sync_inside_a_device_step(tmp_path, data_dir, monkeypatch):
    t = trainer(device_config(max_steps=4), tmp_path, data_dir)
    device_step = DeviceStep(t.learner, t.batches)
    device_step.set(0)
    device_step.prepare(0)
    device_step()  # a first step creates AdamW's state
    for step in (1, 2):
        device_step.prepare(step)  # host to device only
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
                m.setattr(torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"host sync: Tensor.{_n}"))
            device_step()


def test_cuda_graphs_need_a_cuda_gpu(tmp_path, data_dir):
    with pytest.raises(UserError, match="--cuda-graphs needs a CUDA GPU"):
        Trainer(
            device_config(max_steps=2),
            data_dir=data_dir,
            artifacts_dir=tmp_path,
            run_name="t",
            device="cpu",
            progress=False,
            log=lambda m: None,
            cuda_graphs=True,
        )
    assert not (tmp_path / "runs").exists()  # refused before any folder was made


def test_graphed_forward_replays_one_capture_per_argument_signature():
    captures = []

    def fake_capture(run):  # stands in for a CUDA graph: replaying runs the captured function again
        captures.append(run)
        return run

    net = torch.nn.Linear(4, 3)
    graphed = GraphedForward(net, capture=fake_capture)
    with torch.no_grad():
        for batch in (2, 2, 5, 2):
            x = torch.randn(batch, 4)
            torch.testing.assert_close(graphed(x), net(x), rtol=0, atol=0)
        x = torch.randn(2, 4)
        graphed(x).add_(1.0)  # the caller's copy, not the graph's static output
        torch.testing.assert_close(graphed(x), net(x), rtol=0, atol=0)
    assert len(captures) == 2  # shapes (2, 4) and (5, 4)


def test_cuda_graph_sampling_needs_a_cuda_gpu(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from mnist_diffusion.cli import app

    artifacts, _ = tiny_run
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--artifacts-dir",
            str(artifacts),
            "-n",
            "2",
            "--steps",
            "2",
            "-o",
            str(tmp_path / "g.png"),
            "--cuda-graphs",
        ],
    )
    assert result.exit_code == 1 and "--cuda-graphs needs a CUDA GPU" in result.output
