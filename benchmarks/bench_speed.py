"""Training and sampling speed of mnistdiff on the CPU or a CUDA GPU: images/s, the network's
share of a training step, and peak memory. `make bench` runs it with no arguments.

Training is timed through the real loop, ``Trainer.run()`` on the real data with its logging
and checkpoints, and its parts through the learner's own halves of a step; sampling through the
path of ``mnistdiff sample`` (``load_run`` + ``generate``) on the run the package finished.
``--full-epochs`` also trains the default preset's 5 epochs for real and draws 10,000 samples
(the GPU targets). Sampling is timed unguided: one network evaluation per step (guidance
takes two). benchmarks/README.md says what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import get_args

import torch
from common import (
    RESULTS_DIR,
    SAMPLE_BATCH,
    machine_info,
    machine_line,
    rate,
    run_script,
    say,
    time_windows,
    update_readme,
    write_results,
)

from mnist_diffusion.config import PRESETS, Guidance, Precision, RunConfig, SamplingConfig
from mnist_diffusion.data.mnist import DEFAULT_DATA_DIR
from mnist_diffusion.errors import UserError
from mnist_diffusion.nets import count_parameters
from mnist_diffusion.runs.loader import load_run
from mnist_diffusion.runs.store import read_metrics
from mnist_diffusion.runtime import setup_device, sync
from mnist_diffusion.sampling.generate import generate
from mnist_diffusion.training.plan import StepPlan, plan_resume
from mnist_diffusion.training.trainer import Trainer, TrainResult, train

UNGUIDED = Guidance(auto=1.0, labels=1.0, clusters=1.0)  # sampling is timed at one network call a step
SAMPLER_RUNS = (("ddim", 20), ("dpmpp-2m", 20), ("ddpm", 1000), ("ddim", 1000))  # (sampler, model evaluations)
NETWORK_SHARE_TARGET = 0.95  # the target share of a training step spent in forward + backward
FULL_TRAIN_TARGET_S = 30.0  # --full-epochs on one H100/H200: the default preset's 5 epochs
FULL_SAMPLE_TARGET_S = 5.0  # --full-epochs on one H100/H200: 10,000 samples at 20 evaluations


@dataclasses.dataclass(frozen=True)
class DeviceDefaults:
    warmup_steps: int  # training steps before the first timed window (allocator, kernels, compile)
    window_seconds: float  # --window-steps 0 sizes each window to about this long
    sample_batch: int  # images per sampling batch, chosen for throughput
    sample_seconds: float  # time at most this long per sampler run, then extrapolate (0: run it all)


DEFAULTS = {
    "cpu": DeviceDefaults(warmup_steps=3, window_seconds=4.0, sample_batch=SAMPLE_BATCH["cpu"], sample_seconds=15.0),
    "cuda": DeviceDefaults(warmup_steps=20, window_seconds=1.0, sample_batch=SAMPLE_BATCH["cuda"], sample_seconds=5.0),
}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """torch.cuda.max_memory_allocated since the last reset on a GPU; on the CPU the process's
    peak resident set size so far (ru_maxrss), which never goes down."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def free_memory(device: torch.device) -> None:
    """Give back what the objects no longer referenced held, on the GPU too."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def checkpoints_per_run(plan: StepPlan) -> int:
    """How many checkpoints Trainer.run saves in an uninterrupted run of ``plan``: the first,
    before step 1, and one after every step the plan says one is due."""
    return 1 + sum(plan.due(step).checkpoint for step in range(1, plan.stop_step + 1))


# --------------------------------------------------------------------------------------- training


class WindowClock:
    """Trainer's ``on_step`` callback: after ``warmup`` steps, times ``windows`` windows of
    ``window_steps`` whole training steps each, then asks the trainer to stop (it then saves one
    checkpoint, timed from the last window's end to run()'s return). The GPU is synchronized only
    at window edges, so the loop's overlap of CPU and GPU work is kept."""

    def __init__(
        self,
        trainer: Trainer,
        stop: threading.Event,
        warmup: int,
        windows: int,
        window_steps: int,
        window_seconds: float,
    ):
        self.trainer, self.stop = trainer, stop
        self.warmup, self.windows = warmup, windows
        self.window_steps, self.window_seconds = window_steps, window_seconds
        self.edges: set[int] = set()
        self.durations: list[float] = []  # seconds per window
        self.last = 0.0
        self.stopped_at = 0.0  # when stop was asked for (time.perf_counter)

    def __call__(self, step: int) -> None:
        if step < self.warmup - 1 or (self.edges and step not in self.edges):
            return
        sync(self.trainer.device)
        now = time.perf_counter()
        if step == self.warmup:  # size the windows from the last warm-up step
            if not self.window_steps:
                self.window_steps = max(2, round(self.window_seconds / max(now - self.last, 1e-9)))
            stop_step = self.trainer.plan.stop_step
            room = (stop_step - 1 - self.warmup) // self.windows  # never reach the run's end
            if room < 1:
                raise UserError(f"the preset's {stop_step} steps are too few for {self.windows} windows")
            self.window_steps = min(self.window_steps, room)
            self.edges = {self.warmup + k * self.window_steps for k in range(1, self.windows + 1)}
        elif step in self.edges:
            self.durations.append(now - self.last)
            if len(self.durations) == self.windows:
                self.stop.set()
                self.stopped_at = now
        self.last = now


def run_options(args, device: torch.device, artifacts: Path) -> dict:
    """The options of the benchmark's training runs, as `mnistdiff train` takes them from the
    benchmark's flags (--compile/--no-compile, --cuda-graphs), quiet."""
    return dict(
        data_dir=args.data_dir,
        artifacts_dir=artifacts,
        device=device.type,
        compile={"auto": None, "on": True, "off": False}[args.compile],
        progress=False,
        log=say,
        cuda_graphs=args.path == "graphs",
    )


def preset_config(name: str, args) -> RunConfig:
    """The preset, with the benchmark's batch size and precision, and for the graphs path the
    step on the device (which `train --cuda-graphs` captures)."""
    cfg = PRESETS[name]
    train = dataclasses.replace(cfg.train, precision=args.precision, step_on_device=args.path == "graphs")
    if args.batch_size:
        train = dataclasses.replace(train, batch_size=args.batch_size)
    return dataclasses.replace(cfg, train=train)


def path_label(name: str, args) -> str:
    """A row's name: the preset, and ", graphs" for the CUDA-graph path."""
    return name if args.path == "eager" else f"{name}, graphs"


def bench_training(name: str, args, device: torch.device, artifacts: Path) -> tuple[dict, TrainResult]:
    """Whole training steps through Trainer.run, then the parts of a step alone. Returns the
    row, and the run's result: its folder, and the step of the checkpoint its stop saved."""
    cfg = preset_config(name, args)
    stop = threading.Event()
    clock = None  # needs the trainer's step budget, so it is made just after the trainer
    trainer = Trainer(
        cfg,
        run_name=f"bench-{name}",
        stop=stop,
        on_step=lambda step: clock(step),
        **run_options(args, device, artifacts),
    )
    clock = WindowClock(trainer, stop, args.warmup_steps, args.windows, args.window_steps, args.window_seconds)
    reset_peak_memory(device)
    say(f"{name}: training steps through Trainer.run ({args.windows} windows after {args.warmup_steps} warm-up steps)")
    result = trainer.run()
    returned = time.perf_counter()
    if not result.interrupted or len(clock.durations) != args.windows:
        raise RuntimeError("the training run ended before its timed windows did")
    checkpoint_s = returned - clock.stopped_at  # a stopped run saves one checkpoint after its last step
    row = training_row(name, trainer, clock, checkpoint_s, args, device)
    trainer.close()  # the run's lock, released for the run that finishes it
    return row, result


def training_row(
    name: str, trainer: Trainer, clock: WindowClock, checkpoint_s: float, args, device: torch.device
) -> dict:
    """A preset's training row: the loop's windows with its checkpoints amortized over a whole run
    (as many as the run's plan saves), and, on the eager path, the parts of a step alone."""
    batch = trainer.cfg.train.batch_size
    plan, learner = trainer.plan, trainer.learner
    steady_s = statistics.median(clock.durations) / clock.window_steps  # seconds per step
    per_run = checkpoints_per_run(plan)
    step_s = steady_s + checkpoint_s * per_run / plan.total_steps  # checkpoints amortized over a run

    if args.path == "graphs":  # one replay a step: its halves cannot be timed apart
        return graph_training_row(trainer, clock, batch, steady_s, checkpoint_s, per_run, step_s, device)
    say(f"{name}: forward + loss + backward alone, {clock.window_steps} steps a window")
    network_s = statistics.median(bench_network(trainer, args.windows, clock.window_steps))
    say(f"{name}: everything but the network alone (batch, noise, lr, clipping, AdamW, EMA)")
    overhead_s = statistics.median(bench_overhead(trainer, args.windows, clock.window_steps))
    say(f"{name}: the divergence guard alone (per step, and the full check before a write)")
    guard_s = statistics.median(bench_guard(trainer, args.windows, 200))
    state_check_s = statistics.median(
        time_windows(lambda i: trainer.check_finite(i, state=True), device, args.windows, 5, warmup=1)
    )
    out = {
        "batch_size": batch,
        "parameters": count_parameters(learner.model),
        "compile": learner.compiled,
        "warmup_steps": args.warmup_steps,
        "window_steps": clock.window_steps,
        "window_images_per_sec": [round(batch * clock.window_steps / d, 2) for d in clock.durations],
        "steady_step_ms": steady_s * 1e3,
        "checkpoint_ms": checkpoint_s * 1e3,
        "checkpoints_per_run": per_run,
        "steps_per_run": plan.total_steps,
        "step_ms": step_s * 1e3,
        "images_per_sec": batch / step_s,
        "network_ms": network_s * 1e3,
        "other_ms": (step_s - network_s) * 1e3,
        "network_share": network_s / step_s,
        # The same share from the other side: 1 - (the non-network work, timed on its own) / step.
        # Both timings are taken minutes apart on a shared machine, so network ms can exceed the
        # step's; the small non-network part measured directly is the steadier figure.
        "overhead_ms": overhead_s * 1e3,
        "network_share_direct": 1 - (overhead_s + checkpoint_s * per_run / plan.total_steps) / step_s,
        "network_share_target": NETWORK_SHARE_TARGET,
        # The guard against non-finite weights: the per-step watch (and on the CPU its read-back),
        # and the check of every weight, EMA weight and optimizer state before each write.
        "guard_ms": guard_s * 1e3,
        "guard_share": guard_s / step_s,
        "state_check_ms": state_check_s * 1e3,
        "peak_memory_mib": peak_memory_mib(device),
    }
    say(
        f"{name}: {out['images_per_sec']:.1f} img/s, {out['step_ms']:.1f} ms/step, "
        f"network {out['network_ms']:.1f} ms ({out['network_share']:.1%})"
    )
    return out


def graph_training_row(trainer, clock, batch, steady_s, checkpoint_s, per_run, step_s, device) -> dict:
    """The training row of the CUDA-graph path: whole steps only."""
    return {
        "batch_size": batch,
        "parameters": count_parameters(trainer.learner.model),
        "compile": False,
        "window_steps": clock.window_steps,
        "window_images_per_sec": [round(batch * clock.window_steps / d, 2) for d in clock.durations],
        "steady_step_ms": steady_s * 1e3,
        "checkpoint_ms": checkpoint_s * 1e3,
        "checkpoints_per_run": per_run,
        "steps_per_run": trainer.plan.total_steps,
        "step_ms": step_s * 1e3,
        "images_per_sec": batch / step_s,
        "network_ms": None,
        "other_ms": None,
        "network_share": None,
        "overhead_ms": None,
        "network_share_direct": None,
        "network_share_target": NETWORK_SHARE_TARGET,
        "guard_ms": None,
        "guard_share": None,
        "state_check_ms": None,
        "peak_memory_mib": peak_memory_mib(device),
    }


def bench_overhead(trainer: Trainer, windows: int, window_steps: int, warmup: int = 2) -> list[float]:
    """Seconds per step of what a training step does besides the network: ``Batches.batch_for``
    (batch assembly, timesteps, noise) and ``Learner.update`` (learning rate, clipping, the
    divergence watch, AdamW, EMA), on the gradients one ``Learner.forward_backward`` left. One
    value per window."""
    batches, learner = trainer.batches, trainer.learner
    loss = learner.forward_backward(batches.batch_for(0))  # every .grad set

    def step(i: int):
        batches.batch_for(i)
        learner.update(i, loss)

    durations = time_windows(step, trainer.device, windows, window_steps, warmup)
    learner.opt.zero_grad(set_to_none=True)
    return durations


def bench_guard(trainer: Trainer, windows: int, window_steps: int, warmup: int = 2) -> list[float]:
    """Seconds per step of the divergence guard as ``Trainer.run`` pays it: ``Learner.watch`` on a
    loss and a gradient norm, and, after the steps the run's plan says a check is due (every step
    on the CPU), ``Trainer.check_finite``'s read of the flag. One value per window."""
    loss = torch.ones((), device=trainer.device)
    norm = torch.ones((), device=trainer.device)

    def step(i: int):
        trainer.learner.watch(loss, norm)
        if trainer.plan.due(i).check:
            trainer.check_finite(i)

    return time_windows(step, trainer.device, windows, window_steps, warmup)


def bench_network(trainer: Trainer, windows: int, window_steps: int, warmup: int = 2) -> list[float]:
    """Seconds per step of ``Learner.forward_backward`` (zero_grad, forward, loss, backward) on one
    batch of the training shape, with the run's network (compiled or not), autocast and memory
    format: no batch assembly, optimizer, EMA, logging or checkpoints. One value per window."""
    learner = trainer.learner
    batch = trainer.batches.batch_for(0)
    durations = time_windows(lambda i: learner.forward_backward(batch), trainer.device, windows, window_steps, warmup)
    learner.opt.zero_grad(set_to_none=True)
    return durations


# --------------------------------------------------------------------------------------- sampling


class _Enough(Exception):
    """Raised from a sampler's step callback once its time budget is spent."""


def time_sampler(run, settings: SamplingConfig, batch: int, budget_s: float, device: torch.device) -> dict:
    """One batch through ``generate``; with a time budget, stop after the step that spends it
    (at least 2 steps) and extrapolate: every step of a sampler costs the same network call."""
    total = settings.evaluations(run.schedule.num_timesteps)
    done, elapsed = total, 0.0

    def callback(i, t, x, x0):
        nonlocal done, elapsed
        if budget_s and 2 <= i + 1 < total and time.perf_counter() - start > budget_s:
            sync(device)
            done, elapsed = i + 1, time.perf_counter() - start
            raise _Enough

    sync(device)
    start = time.perf_counter()
    try:
        generate(run, batch, dataclasses.replace(settings, batch_size=batch), callback=callback)
        elapsed = time.perf_counter() - start  # generate returns CPU tensors, so the GPU is done
    except _Enough:
        pass
    seconds = elapsed / done * total
    return {
        "sampler": settings.sampler,
        "evaluations": total,
        "batch": batch,
        "evaluations_timed": done,
        "extrapolated": done < total,
        "seconds_per_batch": seconds,
        "images_per_sec": batch / seconds,
    }


def finish_run(stopped: TrainResult, args, device: torch.device, artifacts: Path) -> Path:
    """The benchmark's stopped run, finished by the package as `train --resume RUN --max-steps
    N+1` finishes it: one more step from the checkpoint its stop saved, into a new run folder
    with its final weights. Eager, as sampling's speed does not depend on how a step was taken."""
    plan = plan_resume(stopped.run_dir, max_steps=stopped.step + 1)
    options = {**run_options(args, device, artifacts), "compile": False, "cuda_graphs": False}
    return train(plan.cfg, resume=plan, run_name=None, **options).run_dir


def bench_sampling(name: str, run_dir: Path, args, device: torch.device) -> dict:
    """Each sampler at 20 and 1000 evaluations, on a run loaded as `mnistdiff sample` loads it
    (load_run: the EMA weights the run's finish saved)."""
    run = load_run(run_dir, device)
    reset_peak_memory(device)
    b = args.sample_batch
    say(f"{name}: sampling, batch {b}")
    unguided = SamplingConfig(
        guidance=UNGUIDED, precision=args.precision, batch_size=b, cuda_graphs=args.path == "graphs"
    )
    generate(run, b, dataclasses.replace(unguided, sampler="ddim", steps=2))  # warm-up: allocations and kernels
    rows = []
    for sampler, evals in SAMPLER_RUNS:
        steps = None if sampler == "ddpm" else min(evals, run.schedule.num_timesteps)
        row = time_sampler(
            run, dataclasses.replace(unguided, sampler=sampler, steps=steps), b, args.sample_seconds, device
        )
        rows.append(row)
        say(
            f"{name}: {sampler} at {row['evaluations']} evaluations: {row['images_per_sec']:.1f} img/s"
            + (f" (timed {row['evaluations_timed']} evaluations)" if row["extrapolated"] else "")
        )
    return {"runs": rows, "peak_memory_mib": peak_memory_mib(device)}


# --------------------------------------------------------------------------------------- full run


def bench_full_epochs(args, device: torch.device, artifacts: Path) -> dict:
    """The default preset's epochs trained for real, then --full-samples samples at 20 evaluations."""
    cfg = preset_config("default", args)
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=args.epochs))
    say(f"full run ({args.path}): {cfg.train.epochs} epoch(s) of the default preset")
    reset_peak_memory(device)
    result = train(cfg, run_name="full-epochs", **run_options(args, device, artifacts))
    done = [r for r in read_metrics(result.run_dir) if r.get("done")][-1]
    train_peak = peak_memory_mib(device)
    run = load_run(result.run_dir, device)
    n, b = args.full_samples, args.sample_batch
    times = []
    for _ in range(2):  # the first call includes this batch size's allocations, the second does not
        sync(device)
        start = time.perf_counter()
        generate(run, n, SamplingConfig(batch_size=b, precision=args.precision, cuda_graphs=args.path == "graphs"))
        times.append(time.perf_counter() - start)
    out = {
        "preset": "default",
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "steps": result.step,
        "final_loss": result.loss,
        "train_seconds": done["train_seconds"],
        "train_images_per_sec": result.step * cfg.train.batch_size / done["train_seconds"],
        "train_peak_memory_mib": train_peak,
        "samples": n,
        "sampler": "the default, with its guidance",
        "evaluations": SamplingConfig().evaluations(run.schedule.num_timesteps),
        "sample_batch": b,
        "sample_seconds_first": times[0],
        "sample_seconds": times[1],
        "train_target_seconds": FULL_TRAIN_TARGET_S,
        "sample_target_seconds": FULL_SAMPLE_TARGET_S,
    }
    say(
        f"full run: {out['train_seconds']:.1f} s of training, {n} samples in {times[1]:.2f} s "
        f"({times[0]:.2f} s the first time)"
    )
    return out


# --------------------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    m = results["machine"]
    memory = "peak GPU MiB" if m["device"] == "cuda" else "peak RSS MiB (so far)"
    lines = [
        machine_line(results),
        f"`{results['command']}`",
        "",
        f"| training | batch | images/s | step ms | network ms | network share | non-network ms | network share "
        f"(1 - non-network / step) | checkpoints ms/step | guard ms/step (share) | {memory} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["train"].items():
        ckpt = r["step_ms"] - r["steady_step_ms"]
        if r["network_ms"] is None:  # the graph path: whole steps only
            lines.append(
                f"| {name} | {r['batch_size']} | {rate(r['images_per_sec'])} | {r['step_ms']:.2f} | - | - | - "
                f"| - | {ckpt:.3f} | - | {r['peak_memory_mib']:.0f} |"
            )
            continue
        mark = "✓" if r["network_share_direct"] >= r["network_share_target"] else "✗"
        lines.append(
            f"| {name} | {r['batch_size']} | {rate(r['images_per_sec'])} | {r['step_ms']:.2f} | {r['network_ms']:.2f} "
            f"| {r['network_share']:.1%} | {r['overhead_ms']:.2f} | {r['network_share_direct']:.1%} {mark} "
            f"| {ckpt:.3f} | {r['guard_ms']:.3f} ({r['guard_share']:.2%}) | {r['peak_memory_mib']:.0f} |"
        )
    lines += [
        "",
        f"| sampling | sampler | evaluations | batch | images/s | evaluations timed | {memory} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in results["sample"].items():
        for r in s["runs"]:
            timed = f"{r['evaluations_timed']} (extrapolated)" if r["extrapolated"] else "all"
            lines.append(
                f"| {name} | {r['sampler']} | {r['evaluations']} | {r['batch']} | {rate(r['images_per_sec'])} "
                f"| {timed} | {s['peak_memory_mib']:.0f} |"
            )
    for path, full in results.get("full_epochs", {}).items():
        ok_train = "✓" if full["train_seconds"] < full["train_target_seconds"] else "✗"
        ok_sample = "✓" if full["sample_seconds"] < full["sample_target_seconds"] else "✗"
        lines += [
            "",
            f"| full run ({path}) | result | target |",
            "|---|---:|---:|",
            f"| default preset, {full['epochs']} epoch(s) ({full['steps']} steps), training time | "
            f"{full['train_seconds']:.1f} s {ok_train} | < {full['train_target_seconds']:.0f} s |",
            f"| {full['samples']} samples, {full['sampler']} at {full['evaluations']} evaluations | "
            f"{full['sample_seconds']:.2f} s {ok_sample} (first call {full['sample_seconds_first']:.2f} s) | "
            f"< {full['sample_target_seconds']:.0f} s |",
        ]
    return "\n".join(lines) + "\n"


def overall_peak_memory(results: dict, device: torch.device) -> dict:
    if device.type != "cuda":
        return {"kind": "ru_maxrss (peak RSS of the process)", "mib": peak_memory_mib(device)}
    phases = [r["peak_memory_mib"] for part in ("train", "sample") for r in results[part].values()]
    if "full_epochs" in results:
        phases.append(results["full_epochs"]["train_peak_memory_mib"])
    return {"kind": "torch.cuda.max_memory_allocated (largest phase)", "mib": max(phases)}


# --------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if there is one")
    p.add_argument("--presets", default="default,large", help="comma-separated presets (default,large)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per preset; the median is reported")
    p.add_argument(
        "--window-steps",
        type=int,
        default=0,
        help="training steps per window (0: about --window-seconds each, at least 2)",
    )
    p.add_argument("--window-seconds", type=float, help="target window length (CPU 4, CUDA 1)")
    p.add_argument("--warmup-steps", type=int, help="untimed training steps first, at least 2 (CPU 3, CUDA 20)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the preset's)")
    p.add_argument("--sample-batch", type=int, help="images per sampling batch (CPU 256, CUDA 10000)")
    p.add_argument(
        "--sample-seconds",
        type=float,
        help="time each sampler run at most this long, then extrapolate (0: all of it; CPU 15, CUDA 5)",
    )
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the training network: auto as `mnistdiff train` does for the preset's run "
        "(on for fp32 on a Linux CPU with AVX2 kernels), on as train --compile, off as --no-compile",
    )
    p.add_argument(
        "--paths",
        help="eager and/or graphs (train/sample --cuda-graphs), comma-separated "
        "(default: both on CUDA, eager elsewhere)",
    )
    p.add_argument("--precision", choices=get_args(Precision), default="auto", help="as train --precision")
    p.add_argument(
        "--full-epochs",
        action="store_true",
        help="also train the default preset's epochs for real and time --full-samples samples",
    )
    p.add_argument("--epochs", type=int, help="epochs of the --full-epochs run (default: the preset's 5)")
    p.add_argument("--full-samples", type=int, default=10_000, help="samples drawn after the --full-epochs run")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding MNIST/raw")
    p.add_argument(
        "--out",
        type=Path,
        help="JSON to write (default benchmarks/results/speed-DEVICE.json); the markdown table goes beside it as .md",
    )
    p.add_argument("--readme", type=Path, help="also put the table into this file's bench:DEVICE block")
    args = p.parse_args(argv)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    unknown = [s for s in presets if s not in PRESETS]
    if unknown or not presets:
        p.error(f"--presets takes names from {', '.join(PRESETS)} (got {args.presets!r})")
    args.presets = presets
    if args.windows < 1 or args.window_steps < 0 or (args.warmup_steps is not None and args.warmup_steps < 2):
        p.error("need --windows >= 1, --window-steps >= 0 and --warmup-steps >= 2")
    args.paths = args.paths.split(",") if args.paths else None
    if args.paths and any(path not in ("eager", "graphs") for path in args.paths):
        p.error(f"--paths takes eager and/or graphs (got {','.join(args.paths)})")
    for flag in ("batch_size", "sample_batch", "full_samples", "epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup_device(args.device)
    args.paths = args.paths or (["eager", "graphs"] if device.type == "cuda" else ["eager"])
    defaults = DEFAULTS[device.type]
    for field in dataclasses.fields(DeviceDefaults):
        if getattr(args, field.name) is None:
            setattr(args, field.name, getattr(defaults, field.name))
    out = args.out or RESULTS_DIR / f"speed-{device.type}.json"
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["bench_speed.py", *argv]),
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train": {},
        "sample": {},
    }
    table = ""

    def save() -> None:  # after every phase, so a run cut short still leaves what it measured
        nonlocal table
        results["peak_memory"] = overall_peak_memory(results, device)
        table = markdown(results)
        write_results(out, results, table)

    with tempfile.TemporaryDirectory(prefix="mnistdiff-bench-") as tmp:
        for path in args.paths:
            args.path = path
            if args.full_epochs:  # first, in a fresh process as `mnistdiff train` would be
                results.setdefault("full_epochs", {})[path] = bench_full_epochs(args, device, Path(tmp))
                free_memory(device)
                save()
            for name in args.presets:
                label = path_label(name, args)
                results["train"][label], stopped = bench_training(name, args, device, Path(tmp))
                free_memory(device)  # the trainer's data, weights and optimizer state (in a cycle with its clock)
                run_dir = finish_run(stopped, args, device, Path(tmp))
                free_memory(device)
                results["sample"][label] = bench_sampling(name, run_dir, args, device)
                save()
    if args.readme:
        update_readme(args.readme, device.type, table)
    print(table)
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    run_script(main)
