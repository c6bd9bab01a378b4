"""The CPU path, variant against variant in one run: the memory allocator (glibc as it comes, glibc
as mnistdiff tunes it, jemalloc and tcmalloc where installed), the weights' layout when sampling
(channels-last or NCHW) and the thread count, each timed in
a fresh child process on the same work: `mnistdiff sample`'s (the default sampler and guidance on
the default network) and training steps of the default preset on MNIST. benchmarks/README.md says
what each number means.

    python benchmarks/bench_cpu.py
    python benchmarks/bench_cpu.py --variants default,tuned --sample-n 100 --train-steps 20
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_speed import RESULTS_DIR, machine_info, machine_line, run_script, say

from mnist_diffusion.config import DEFAULT_DATA_DIR, PRESETS, SamplingConfig
from mnist_diffusion.diffusion.schedule import Schedule
from mnist_diffusion.errors import UserError
from mnist_diffusion.io import atomic_write_bytes, atomic_write_json
from mnist_diffusion.nets.unet import build_model
from mnist_diffusion.runs.loader import LoadedRun
from mnist_diffusion.runtime import autocast_dtype, describe_machine, matmul_rate, precision_name, setup_device
from mnist_diffusion.sampling.generate import generate
from mnist_diffusion.training.speed import step_flops_per_image
from mnist_diffusion.training.trainer import Trainer

LIBS = {  # preloadable allocators, where Debian's packages put them (libjemalloc2, libtcmalloc-minimal4)
    "jemalloc": ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"],
    "tcmalloc": ["/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                 "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4"],
}  # fmt: skip


def variant_env(name: str, cores: int) -> dict[str, str] | None:
    """The environment of a child process for a variant, or None where this machine lacks it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    env["OMP_NUM_THREADS"] = str(cores)
    env.pop("MNISTDIFF_CHANNELS_LAST", None)
    if name == "default":  # the tool before its CPU tuning: glibc as it comes, NCHW weights when sampling
        env.update(MNISTDIFF_ALLOCATOR="system", MNISTDIFF_CHANNELS_LAST="0")
    elif name == "tuned":  # what mnistdiff does
        env.pop("MNISTDIFF_ALLOCATOR", None)
    elif name == "nchw":  # what mnistdiff does, but sampling with NCHW weights: the layout's share
        env.pop("MNISTDIFF_ALLOCATOR", None)
        env["MNISTDIFF_CHANNELS_LAST"] = "0"
    elif name == "glibc-env":  # glibc tuned by the user's environment (mallopt caps the mmap threshold at 32 MiB)
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**32), MALLOC_TOP_PAD_=str(2**29))
    elif name in LIBS:
        lib = next((p for p in LIBS[name] if Path(p).is_file()), None)
        if lib is None:
            return None
        env.update(LD_PRELOAD=lib, MNISTDIFF_ALLOCATOR="system")
    elif name.startswith("threads-"):
        env["OMP_NUM_THREADS"] = name.split("-", 1)[1]
    else:
        raise UserError(f"unknown variant {name!r}")
    return env


# --------------------------------------------------------------------------------------- the child


def child(args) -> dict:
    """The work, timed: sampling as `mnistdiff sample` does it, then training steps."""
    device = setup_device("cpu")
    cfg = PRESETS["default"]
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    guide = copy.deepcopy(model)
    counts = torch.full((cfg.train.clusters,), 10)
    run = LoadedRun(Path("."), cfg, model, Schedule(cfg.diffusion), guide, counts)
    sampling = SamplingConfig(steps=args.sample_steps)
    generate(run, 8, SamplingConfig(steps=2))  # warm-up
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    generate(run, args.sample_n, sampling)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    out = {"threads": torch.get_num_threads(), "sample": {
        "n": args.sample_n, "steps": args.sample_steps, "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
        "images_per_sec": args.sample_n / wall}}  # fmt: skip
    # In this process, beside its own training steps, in the precision they train in (bf16 on a
    # CPU with bf16 units): the share of a bf16 step in the fp32 rate would mean nothing.
    dtype = autocast_dtype(PRESETS["default"].train.precision, device)
    out["precision"] = precision_name(dtype)
    out["matmul_gflops"] = matmul_rate(device, dtype or torch.float32)
    out["train"] = train_rate(args, device)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def train_rate(args, device: torch.device) -> dict:
    """Images/s of whole training steps of the default preset (Trainer.run on MNIST), median of
    windows of ``train_steps / 4`` steps after 3 untimed ones."""
    cfg = PRESETS["default"]
    marks: list[float] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, data_dir=args.data_dir, artifacts_dir=Path(tmp), run_name="bench", device=device.type,
                          progress=False, log=lambda m: None, stop=stop,
                          on_step=lambda s: (marks.append(time.perf_counter()), s >= 3 + args.train_steps
                                             and stop.set()))  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF)
        trainer.run()
        after = resource.getrusage(resource.RUSAGE_SELF)
    window = max(1, args.train_steps // 4)
    timed = marks[3 : 3 + args.train_steps]
    starts = range(0, len(timed) - window, window)
    rates = [window * cfg.train.batch_size / (timed[i + window] - timed[i]) for i in starts]
    return {"steps": args.train_steps, "images_per_sec": statistics.median(rates),
            "sys_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime}  # fmt: skip


# --------------------------------------------------------------------------------------- the parent


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    device = setup_device("cpu")
    cores = torch.get_num_threads()
    machine = describe_machine(device)
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["bench_cpu.py", *argv]),
        "machine": {**machine_info(device), **machine.to_dict()},
        "matmul_gflops": {"fp32": matmul_rate(device, torch.float32)},
        "step_mflop_per_image": step_flops_per_image(PRESETS["default"]) / 1e6,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"},
        "variants": {},
    }
    if machine.bf16_units:
        results["matmul_gflops"]["bf16"] = matmul_rate(device, torch.bfloat16)
    for name in args.variants.split(","):
        env = variant_env(name, cores)
        if env is None:
            say(f"{name}: not installed here, skipped")
            continue
        say(f"{name}: {args.sample_n} samples at {args.sample_steps} steps, then {args.train_steps} training steps")
        cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode:
            raise UserError(f"the {name} child failed: {proc.stderr.strip().splitlines()[-1:]}")
        results["variants"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
    table = markdown(results)
    out = args.out or RESULTS_DIR / "cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, results)
    atomic_write_bytes(out.with_suffix(".md"), table.encode())
    print(table)
    return results


def markdown(results: dict) -> str:
    base = results["variants"].get("default")
    flops = results["step_mflop_per_image"] * 1e6
    rates = ", ".join(f"{name} {gflops:.0f}" for name, gflops in results["matmul_gflops"].items())
    trains_in = sorted({v.get("precision", "fp32") for v in results["variants"].values()}) or ["fp32"]
    lines = [machine_line(results), f"`{results['command']}`", "",
             f"matrix rate (GFLOP/s): {rates}; training in {' and '.join(trains_in)}, each variant's share is of "
             f"that precision's rate measured in its own process; a training step is {flops / 1e6:.0f} MFLOP per "
             "image", "",
             "| variant | threads | sampling s | of it system | vs default | training images/s | share of the matrix "
             "rate | vs default | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, v in results["variants"].items():
        s, t = v["sample"], v["train"]
        share = t["images_per_sec"] * flops / 1e9 / v["matmul_gflops"]
        vs_s = f"{base['sample']['wall_s'] / s['wall_s']:.2f}x" if base else "-"
        vs_t = f"{t['images_per_sec'] / base['train']['images_per_sec']:.2f}x" if base else "-"
        lines.append(f"| {name} | {v['threads']} | {s['wall_s']:.1f} | {s['sys_s'] / s['wall_s']:.0%} | {vs_s} "
                     f"| {t['images_per_sec']:.1f} | {share:.0%} | {vs_t} | {v['peak_rss_mib']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="default,tuned,nchw,jemalloc,tcmalloc,threads-1",
                   help="default (glibc as it comes, NCHW: the tool before its CPU tuning), tuned (what mnistdiff "
                        "does: its mallopt, channels-last sampling), nchw (tuned, NCHW sampling), glibc-env, "
                        "jemalloc, tcmalloc, threads-N")
    p.add_argument("--sample-n", type=int, default=500, help="images sampled (one batch of 500, as `sample` draws)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps (the default: 20)")
    p.add_argument("--train-steps", type=int, default=40, help="timed training steps")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--out", type=Path, help="the .json to write (a .md beside it); default benchmarks/results/cpu.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main)
