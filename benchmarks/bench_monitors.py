"""What watching a run costs: `train --sample-every` (a progress grid) and `train --eval-every`
(a FID of --eval-samples samples), per call and as a share of a preset's training time.

A training step is timed through the trainer's own ``advance`` on the real data; each monitor through
its ``after_step``, the call the training loop makes, on the same trainer. The FID's first call
also loads the test set's reference features, once per process: it is reported apart. Shares
are for a whole run of the preset at the given intervals:
calls * seconds per call / (planned steps * seconds per step).

    python benchmarks/bench_monitors.py                          # default preset, CPU or GPU
    python benchmarks/bench_monitors.py --device cuda --eval-every 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, machine_info, run_script, say, time_windows, write_results

from mnist_diffusion.config import EVAL_SAMPLES, PRESETS, SAMPLE_EVERY
from mnist_diffusion.data.mnist import DEFAULT_DATA_DIR
from mnist_diffusion.monitors.progress import FidMonitor, SampleMonitor
from mnist_diffusion.runtime import setup_device, sync
from mnist_diffusion.training.trainer import Trainer

SHARE_LIMIT = 0.05  # a monitor on by default must cost under 5% of the training time


def time_calls(monitor, trainer: Trainer, step: int, calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls of ``monitor.after_step`` on a step it acts on."""
    seconds = []
    for _ in range(calls):
        sync(trainer.device)
        start = time.perf_counter()
        monitor.after_step(trainer, step)
        sync(trainer.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def share(call_s: float, every: int, trainer: Trainer, step_s: float) -> dict:
    """A monitor's cost over a whole run of the trainer's plan, called every ``every`` steps."""
    total = trainer.plan.total_steps
    calls = total // every if every else 0
    return {
        "every": every,
        "calls_per_run": calls,
        "seconds_per_run": calls * call_s,
        "share": calls * call_s / (total * step_s),
    }


def measure(args, device: torch.device, artifacts: Path) -> dict:
    cfg = PRESETS[args.preset]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=args.precision))
    trainer = Trainer(
        cfg,
        data_dir=args.data_dir,
        artifacts_dir=artifacts,
        run_name=f"bench-{args.preset}",
        device=device.type,
        progress=False,
        log=say,
    )
    say(f"{args.preset}: {args.steps} training steps, after 3 untimed ones")
    trainer.learner.model.train()
    step_s = statistics.median(time_windows(trainer.advance, device, 1, args.steps, warmup=3))
    say(f"{args.preset}: {step_s * 1e3:.1f} ms a step; the progress grid, {args.calls} calls")
    grid_s = time_calls(SampleMonitor(1), trainer, 1, args.calls)
    say(f"{args.preset}: the FID of {args.eval_samples} samples, 1 + {args.calls} calls")
    fid = FidMonitor(1, args.data_dir, n=args.eval_samples)
    first_s = time_calls(fid, trainer, 1, 1)[0]
    fid_s = time_calls(fid, trainer, 1, args.calls)
    grid, score = statistics.median(grid_s), statistics.median(fid_s)
    return {
        "preset": args.preset,
        "step_ms": step_s * 1e3,
        "planned_steps": trainer.plan.total_steps,
        "grid_seconds": grid_s,
        "grid_in_steps": grid / step_s,
        "grid": share(grid, args.sample_every, trainer, step_s),
        "fid_first_call_seconds": first_s,
        "fid_seconds": fid_s,
        "fid_images_per_sec": args.eval_samples / score,
        "fid_in_steps": score / step_s,
        "fid": share(score, args.eval_every, trainer, step_s),
    }


def markdown(results: dict) -> str:
    r = results["result"]
    rows = [
        ("progress grid (16 samples)", statistics.median(r["grid_seconds"]), r["grid_in_steps"], r["grid"]),
        (
            f"FID of {results['settings']['eval_samples']} samples",
            statistics.median(r["fid_seconds"]),
            r["fid_in_steps"],
            r["fid"],
        ),
    ]
    lines = [
        f"{r['preset']} preset: {r['step_ms']:.1f} ms a training step, {r['planned_steps']} planned steps; "
        f"the FID's first call {r['fid_first_call_seconds']:.1f} s (reference features)",
        "",
        "| monitor | s per call | training steps | every | share of the run |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, seconds, steps, run in rows:
        every = run["every"] or "off"
        lines.append(f"| {name} | {seconds:.2f} | {steps:.1f} | {every} | {run['share']:.1%} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if there is one")
    p.add_argument("--preset", choices=list(PRESETS), default="default", help="the run to price the monitors for")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="as train --precision")
    p.add_argument("--sample-every", type=int, default=SAMPLE_EVERY, help="as train --sample-every (for the share)")
    p.add_argument("--eval-every", type=int, default=1000, help="as train --eval-every (for the share)")
    p.add_argument("--eval-samples", type=int, default=EVAL_SAMPLES, help="as train --eval-samples")
    p.add_argument("--steps", type=int, default=20, help="training steps timed")
    p.add_argument("--calls", type=int, default=3, help="timed calls of each monitor; the median is reported")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding MNIST/raw")
    p.add_argument("--out", type=Path, help="JSON to write (default benchmarks/results/monitors-DEVICE.json)")
    args = p.parse_args(argv)
    if min(args.steps, args.calls) < 1 or args.eval_samples < 10 or min(args.sample_every, args.eval_every) < 0:
        p.error("need --steps, --calls >= 1, --eval-samples >= 10 and intervals >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup_device(args.device)
    with tempfile.TemporaryDirectory(prefix="mnistdiff-bench-") as tmp:
        result = measure(args, device, Path(tmp))
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["bench_monitors.py", *argv]),
        "machine": machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "result": result,
    }
    out = args.out or RESULTS_DIR / f"monitors-{device.type}.json"
    table = markdown(results)
    write_results(out, results, table)
    print(table)
    for name, run in (("grid", result["grid"]), ("fid", result["fid"])):
        if run["share"] > SHARE_LIMIT:
            say(f"{name}: {run['share']:.1%} of the run at every {run['every']} steps, over {SHARE_LIMIT:.0%}")
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    run_script(main)
