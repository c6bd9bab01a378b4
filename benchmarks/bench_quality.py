"""One row of the speedrun table: train one configuration for a given number of steps (or a wall
time) and score it with `mnistdiff eval`.

A configuration is a preset with any of its fields changed by ``--set FIELD=VALUE`` (every field of
RunConfig's model, diffusion and train sections, checked as ``config.json`` is). Training is eager
and without the end-of-run grid, so what is timed is the loop. The score is `eval` with the
default sampling (the sampler, steps and guidance a user gets) at ``-n`` samples, with its 95%
bootstrap intervals. One result file per run in ``--out``; `mnistdiff compare` on the runs pools
seed replicates and says which differences are real.

Equal wall time for changes that do not change a step's cost (the learning rate, the EMA, the
noise levels) is equal steps: give ``--steps``, which does not depend on how busy the machine is.
For a change that does (the widths), ``--equal-time`` times a training step of the preset and of
the change, in turns on the same synthetic batches, and scales ``--steps`` by the ratio of their
medians (recorded in the result); ``--time-budget`` plans from this machine's pace instead.

    python benchmarks/bench_quality.py --steps 1300 --seed 0 -n 2000 --label ema-0.995 --set ema_decay=0.995
    python benchmarks/bench_quality.py --steps 1300 --equal-time --label w48 --set channel_mult=1,2,3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, compare_steps, machine_info, run_script, say, write_results

from mnist_diffusion.config import PRESETS, RunConfig, build_config
from mnist_diffusion.errors import UserError
from mnist_diffusion.runs.store import read_metrics


def _field_types() -> dict[str, object]:
    """Each settable field's default in the default preset, by name (its type parses the value)."""
    cfg = RunConfig()
    return {
        f.name: getattr(section, f.name)
        for section in (cfg.model, cfg.diffusion, cfg.train)
        for f in dataclasses.fields(section)
    }


def parse_setting(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` as (field, value of the field's type); a bad one is a UserError."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    types = _field_types()
    if not sep or key not in types:
        raise UserError(f"--set takes FIELD=VALUE with FIELD one of {', '.join(sorted(types))} (got {text!r})")
    default = types[key]
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return key, raw.lower() in ("true", "1")
        if isinstance(default, tuple):
            return key, tuple(int(v) for v in raw.split(","))
        if isinstance(default, int):
            return key, int(raw)
        if isinstance(default, float):
            return key, float(raw)
        return key, raw
    except ValueError:
        raise UserError(f"--set {key} takes a {type(default).__name__} (got {raw!r})") from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True, help="the row's name; the run is named LABEL-sSEED")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a config field changed")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (the plan the lr and guide follow)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds: plan the steps from this pace")
    p.add_argument(
        "--equal-time",
        action="store_true",
        help="scale --steps by the preset's step time over the change's, both timed here first",
    )
    p.add_argument("--seed", type=int, default=0, help="the training seed")
    p.add_argument("-n", "--num-samples", type=int, default=10_000, help="samples the eval scores")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--artifacts-dir", type=Path, default=Path("artifacts/speedrun"))
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "quality")
    args = p.parse_args(argv)
    if (args.steps is None) == (args.time_budget is None):
        raise UserError("give one of --steps and --time-budget")
    if args.equal_time and args.steps is None:
        raise UserError("--equal-time scales --steps: give --steps")
    overrides = dict(parse_setting(s) for s in args.set)
    try:
        cfg = build_config(args.preset, **{**overrides, "seed": args.seed, "steps": args.steps or None})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = None
    if args.equal_time:
        timing = equal_time_steps(build_config(args.preset, seed=args.seed), cfg, args.steps)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=timing["steps"]))
    result = train_and_score(cfg, args, overrides)
    result["equal_time"] = timing
    name = f"{args.label}-s{args.seed}"
    m = result["eval"]
    table = (
        f"| {args.label} | {args.seed} | {result['steps']:,} | {result['train_seconds']:.0f} | "
        f"{m['fid']:.3f} [{m['fid_low']:.3f}, {m['fid_high']:.3f}] | {100 * m['confident_share']:.1f}% |\n"
    )
    write_results(args.out / f"{name}.json", result, table)
    print(table, end="")


def equal_time_steps(base: RunConfig, changed: RunConfig, steps: int, windows: int = 7, per_window: int = 4) -> dict:
    """The steps of ``changed`` that take as long as ``steps`` of ``base``: a training step of each
    (eager, the trainer's own Learner.step on one synthetic batch of each's size) timed by
    :func:`common.compare_steps`, as profile_step.py times its variants: ``windows`` rounds of
    ``per_window`` steps alternating between the two after 3 untimed steps each, so that both see
    the same machine; the median of the rounds' ratios scales ``steps``. Each one's arithmetic
    (MFLOP an image, counted, not timed) is recorded beside the times: it does not depend on the
    machine, so it tells another CPU's ratio from this one's."""
    from mnist_diffusion.runtime import DistInfo
    from mnist_diffusion.training.batches import Batch
    from mnist_diffusion.training.learner import Learner
    from mnist_diffusion.training.speed import step_flops_per_image

    def synthetic_batch(cfg: RunConfig) -> Batch:
        b, g = cfg.train.batch_size, torch.Generator().manual_seed(0)
        y = torch.randint(cfg.model.num_classes, (b,), generator=g) if cfg.model.num_classes else None
        return Batch(
            x0=torch.rand(b, 1, 28, 28, generator=g) * 2 - 1,
            y=y,
            t=torch.randint(cfg.diffusion.timesteps, (b,), generator=g),
            noise=torch.randn(b, 1, 28, 28, generator=g),
        )

    configs = {"base": base, "changed": changed}
    learners = {
        name: Learner(cfg, torch.device("cpu"), DistInfo(), total_steps=steps, log=lambda _: None)
        for name, cfg in configs.items()
    }
    batches = {name: synthetic_batch(cfg) for name, cfg in configs.items()}
    timed, _ = compare_steps(learners, batches, rounds=windows, block=per_window)
    ratio = timed["changed"]["speed_vs_first"]  # a step of the preset over a step of the change
    scaled = max(1, round(steps * ratio))
    medians = {name: timed[name]["step_ms"] / 1e3 for name in configs}
    mflop = {name: step_flops_per_image(cfg) / 1e6 for name, cfg in configs.items()}
    say(
        f"equal time: a step takes {1000 * medians['base']:.0f} ms (the preset) and {1000 * medians['changed']:.0f} ms "
        f"(the change), {mflop['base']:.0f} and {mflop['changed']:.0f} MFLOP an image: {steps:,} steps of the "
        f"preset are {scaled:,} of the change"
    )
    return {
        "steps": scaled,
        "base_steps": steps,
        "step_seconds": {name: [ms / 1e3 for ms in timed[name]["blocks_ms"]] for name in configs},
        "median_seconds": medians,
        "ratio": ratio,
        "step_mflop_per_image": mflop,
    }


def train_and_score(cfg: RunConfig, args: argparse.Namespace, overrides: dict) -> dict:
    from mnist_diffusion.training.trainer import train

    start = time.perf_counter()
    out = train(
        cfg,
        data_dir=Path(args.data_dir),
        artifacts_dir=args.artifacts_dir,
        run_name=f"{args.label}-s{args.seed}",
        device="cpu",
        compile=False,
        progress=False,
        log=say,
        time_budget=args.time_budget,
    )
    wall = time.perf_counter() - start
    done = [r for r in read_metrics(out.run_dir) if r.get("done")][-1]
    say(f"trained {out.run_dir.name}: {done['step']} steps in {done['train_seconds']:.0f} s; scoring")
    env = {**os.environ}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    scored = subprocess.run(
        [sys.executable, "-m", "mnist_diffusion", "eval", "--run", str(out.run_dir), "-n", str(args.num_samples)]
        + ["--json", "--device", "cpu", "--data-dir", args.data_dir],
        capture_output=True,
        text=True,
        env=env,
    )
    if scored.returncode:
        raise UserError(f"eval of {out.run_dir.name} failed: {scored.stderr.strip()[-300:]}")
    report = json.loads(scored.stdout)
    model = report["model"]
    fid = report["uncertainty"]["model"]["fid"]  # the 95% bootstrap interval
    return {
        "label": args.label,
        "seed": args.seed,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "run": str(out.run_dir),
        "steps": done["step"],
        "train_seconds": done["train_seconds"],
        "command_seconds": round(wall, 1),
        "num_samples": args.num_samples,
        "eval": {
            "fid": model["fid"],
            "fid_low": fid["low"],
            "fid_high": fid["high"],
            "floor_fid": report["real"]["fid"],
            "confident_share": model["confident_share"],
            "precision": model["precision"],
            "recall": model["recall"],
        },
        "machine": machine_info(torch.device("cpu")),
        "date": datetime.date.today().isoformat(),
        "argv": sys.argv[1:],
    }


if __name__ == "__main__":
    run_script(main)
