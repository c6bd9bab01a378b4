"""The CPU path, variant against variant in one run: the memory allocator (glibc as it comes, glibc
as mnistdiff tunes it, with or without torch's huge pages, jemalloc and tcmalloc where installed),
the weights' layout when sampling (channels-last or NCHW) and the thread count, each timed on the
same work in fresh child processes set up as the commands set up: `mnistdiff sample`'s (the
default sampler and guidance on the default network) in one, training steps of the default
preset on MNIST in another. benchmarks/README.md says what each number means.

    python benchmarks/bench_cpu.py
    python benchmarks/bench_cpu.py --variants default,tuned --sample-n 100 --train-steps 20
    python benchmarks/bench_cpu.py --variants no-thp,tuned --repeat 3 --isa avx2 --precision fp32

`--repeat K` runs every variant K times, the order reversed each round, and reports medians and
the median of each round's ratios: a process's speed on a shared host moves by more than some
variants differ. `--isa avx2` keeps the children to AVX2 kernels (ATen, oneDNN and MKL), which
stands in for a CPU without AVX-512 or bf16 units on a newer one: its instruction set, not its
cores, caches or memory.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import functools
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
from common import ISA_ENV, RESULTS_DIR, machine_info, machine_line, run_script, say, write_results

from mnist_diffusion.allocator import THP_VARIABLE, prefer_huge_pages
from mnist_diffusion.config import DEFAULT_DATA_DIR, PRESETS, SamplingConfig
from mnist_diffusion.diffusion.schedule import Schedule
from mnist_diffusion.errors import UserError
from mnist_diffusion.nets.unet import build_model
from mnist_diffusion.runs.loader import LoadedRun
from mnist_diffusion.runtime import autocast_dtype, describe_machine, matmul_rate, precision_name, setup_device
from mnist_diffusion.sampling.generate import generate
from mnist_diffusion.training.speed import step_flops_per_image
from mnist_diffusion.training.trainer import train

LIBS = {  # preloadable allocators, where Debian's packages put them (libjemalloc2, libtcmalloc-minimal4)
    "jemalloc": ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"],
    "tcmalloc": [
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    ],
}


def variant_env(name: str, cores: int, isa: str = "native") -> dict[str, str] | None:
    """The environment of a child process for a variant, or None where this machine lacks it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", THP_VARIABLE, *ISA_ENV["avx2"])
    }
    env.update(ISA_ENV.get(isa, {}))
    env["OMP_NUM_THREADS"] = str(cores)
    env.pop("MNISTDIFF_CHANNELS_LAST", None)
    if name == "default":  # the tool before its CPU tuning: glibc as it comes, NCHW weights when sampling
        env.update(MNISTDIFF_ALLOCATOR="system", MNISTDIFF_CHANNELS_LAST="0")
    elif name == "tuned":  # what mnistdiff does
        env.pop("MNISTDIFF_ALLOCATOR", None)
    elif name == "no-thp":  # what mnistdiff does, without torch's huge pages: their share
        env.pop("MNISTDIFF_ALLOCATOR", None)
        env[THP_VARIABLE] = "0"
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
    """One part of the work, timed, in this process, set up as its command sets up: ``sample``
    (`mnistdiff sample`'s sampling) or ``train`` (training steps, huge pages asked for first as
    `mnistdiff train` asks)."""
    if args.child == "train":
        prefer_huge_pages()
    device = setup_device("cpu")
    cfg = preset(args.precision)
    # In the precision the part runs in (bf16 on a CPU with bf16 units): the share of a bf16 step
    # in the fp32 rate would mean nothing.
    dtype = autocast_dtype(cfg.train.precision, device)
    out = {
        "threads": torch.get_num_threads(),
        "precision": precision_name(dtype),
        "isa": torch.backends.cpu.get_cpu_capability(),
    }
    if args.child == "sample":
        out["sample"] = sample_time(args, cfg)
    else:
        out["matmul_gflops"] = matmul_rate(device, dtype or torch.float32)
        out["train"] = train_rate(args, device)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["huge_pages_mib"] = huge_pages_mib()
    return out


def sample_time(args, cfg) -> dict:
    """Wall, user and system seconds of drawing ``args.sample_n`` images as `mnistdiff sample` does."""
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    guide = copy.deepcopy(model)
    counts = torch.full((cfg.train.clusters,), 10)
    run = LoadedRun(Path("."), cfg, model, Schedule(cfg.diffusion), guide, counts)
    sampling = SamplingConfig(steps=args.sample_steps, precision=args.precision)
    generate(run, 8, SamplingConfig(steps=2, precision=args.precision))  # warm-up
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    generate(run, args.sample_n, sampling)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "n": args.sample_n,
        "steps": args.sample_steps,
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "images_per_sec": args.sample_n / wall,
    }


def preset(precision: str):
    """The default preset, training in ``precision``."""
    cfg = PRESETS["default"]
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def huge_pages_mib() -> float | None:
    """This process's memory on transparent huge pages now (Linux), in MiB."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("AnonHugePages:"))
    except (OSError, StopIteration, ValueError):
        return None


def train_rate(args, device: torch.device) -> dict:
    """Images/s of whole training steps of the default preset (``train``: Trainer.run on MNIST), median of
    windows of ``train_steps / 4`` steps after 3 untimed ones."""
    cfg = preset(args.precision)
    marks: list[float] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_SELF)
        train(
            cfg,
            data_dir=args.data_dir,
            artifacts_dir=Path(tmp),
            run_name="bench",
            device=device.type,
            progress=False,
            log=lambda m: None,
            stop=stop,
            on_step=lambda s: (marks.append(time.perf_counter()), s >= 3 + args.train_steps and stop.set()),
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
    window = max(1, args.train_steps // 4)
    timed = marks[3 : 3 + args.train_steps]
    starts = range(0, len(timed) - window, window)
    rates = [window * cfg.train.batch_size / (timed[i + window] - timed[i]) for i in starts]
    return {
        "steps": args.train_steps,
        "images_per_sec": statistics.median(rates),
        "sys_s": after.ru_stime - before.ru_stime,
        "user_s": after.ru_utime - before.ru_utime,
    }


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
        "step_mflop_per_image": step_flops_per_image(preset(args.precision)) / 1e6,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"},
        "rounds": [],
    }
    names = [n for n in args.variants.split(",") if variant_env(n, cores, args.isa) is not None]
    for name in sorted(set(args.variants.split(",")) - set(names)):
        say(f"{name}: not installed here, skipped")
    for r in range(args.repeat):
        runs = {}
        for name in names if r % 2 == 0 else names[::-1]:  # reversed every other round: no variant always first
            say(
                f"round {r + 1}/{args.repeat}, {name}: {args.sample_n} samples at {args.sample_steps} steps, then "
                f"{args.train_steps} training steps"
            )
            parts = [run_child(part, name, argv, variant_env(name, cores, args.isa)) for part in ("sample", "train")]
            runs[name] = {
                **parts[0],
                **parts[1],
                "peak_rss_mib": max(p["peak_rss_mib"] for p in parts),
                "huge_pages_mib": [p["huge_pages_mib"] for p in parts],
            }
        results["rounds"].append({name: runs[name] for name in names})
    results["variants"] = summarize(results["rounds"])
    table = markdown(results)
    write_results(args.out or RESULTS_DIR / "cpu.json", results, table)
    print(table)
    return results


def run_child(part: str, name: str, argv: list[str] | None, env: dict[str, str]) -> dict:
    """A fresh process doing ``part`` of the work for variant ``name``: what it measured."""
    cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", part]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise UserError(f"the {name} child ({part}) failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def itemgetter(*keys: str):
    """``run[keys[0]][keys[1]]...`` as a function of ``run``."""
    return lambda run: functools.reduce(dict.__getitem__, keys, run)


def summarize(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Each variant's medians over the rounds, and the median over rounds of its ratio to the
    first variant's run of the same round (``vs_first``: sampling and training, higher is faster)."""
    first = next(iter(rounds[0]))

    def median_of(name: str, get) -> float:
        return statistics.median(get(r[name]) for r in rounds)

    def ratio(name: str, get, faster_when_higher: bool) -> float:
        ratios = [get(r[name]) / get(r[first]) for r in rounds]
        return statistics.median(ratios if faster_when_higher else [1 / x for x in ratios])

    wall, sys_s = itemgetter("sample", "wall_s"), itemgetter("sample", "sys_s")
    train = itemgetter("train", "images_per_sec")
    out = {}
    for name in rounds[0]:
        out[name] = {
            **rounds[0][name],
            "runs": len(rounds),
            "sample": {"wall_s": median_of(name, wall), "sys_s": median_of(name, sys_s)},
            "train": {"images_per_sec": median_of(name, train)},
            "matmul_gflops": median_of(name, itemgetter("matmul_gflops")),
            "huge_pages_mib": rounds[0][name].get("huge_pages_mib"),
            "peak_rss_mib": max(r[name]["peak_rss_mib"] for r in rounds),
            "vs_first": {"sample": ratio(name, wall, False), "train": ratio(name, train, True)},
        }
    return out


def markdown(results: dict) -> str:
    variants = results["variants"]
    first = next(iter(variants))
    flops = results["step_mflop_per_image"] * 1e6
    by_precision: dict[str, list[float]] = {}
    for v in variants.values():
        by_precision.setdefault(v.get("precision", "fp32"), []).append(v["matmul_gflops"])
    rates = ", ".join(f"{p} {statistics.median(g):.0f}" for p, g in sorted(by_precision.items()))
    isa = sorted({v.get("isa", "native") for v in variants.values()})
    runs = max(v.get("runs", 1) for v in variants.values())
    lines = [
        machine_line(results),
        f"`{results['command']}`",
        "",
        f"matrix rate (GFLOP/s), measured in the children: {rates}; kernels: {' and '.join(isa)}; each "
        f"variant's share is of the rate in the precision it trains in, measured in its own process; a "
        f"training step is {flops / 1e6:.0f} MFLOP per image"
        + (f"; medians of {runs} runs per variant, ratios the median of each round's" if runs > 1 else ""),
        "",
        f"| variant | threads | sampling s | of it system | vs {first} | training images/s | share of the matrix "
        f"rate | vs {first} | huge pages MiB, sampling / training | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in variants.items():
        s, t = v["sample"], v["train"]
        share = t["images_per_sec"] * flops / 1e9 / v["matmul_gflops"]
        base = variants[first]
        vs = v.get("vs_first") or {
            "sample": base["sample"]["wall_s"] / s["wall_s"],
            "train": t["images_per_sec"] / base["train"]["images_per_sec"],
        }
        huge = " / ".join("-" if mib is None else f"{mib:.0f}" for mib in v.get("huge_pages_mib") or [None, None])
        lines.append(
            f"| {name} | {v['threads']} | {s['wall_s']:.1f} | {s['sys_s'] / s['wall_s']:.0%} "
            f"| {vs['sample']:.2f}x | {t['images_per_sec']:.1f} | {share:.0%} | {vs['train']:.2f}x | {huge} "
            f"| {v['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--variants",
        default="default,tuned,nchw,jemalloc,tcmalloc,threads-1",
        help="default (glibc as it comes, NCHW: the tool before its CPU tuning), tuned (what mnistdiff "
        "does: its mallopt, huge pages in training, channels-last sampling), no-thp (tuned without "
        "huge pages), nchw (tuned, NCHW sampling), glibc-env, jemalloc, tcmalloc, threads-N; the "
        "first listed is what the others are compared with",
    )
    p.add_argument("--sample-n", type=int, default=500, help="images sampled (one batch of 500, as `sample` draws)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps (the default: 20)")
    p.add_argument("--train-steps", type=int, default=40, help="timed training steps")
    p.add_argument("--repeat", type=int, default=1, help="runs of every variant, the order reversed each round")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="sampling and training precision (auto: bf16 where the CPU has bf16 units)",
    )
    p.add_argument(
        "--isa",
        choices=["native", *ISA_ENV],
        default="native",
        help="the instruction set the children's kernels may use (avx2: a CPU without AVX-512 or bf16)",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--out", type=Path, help="the .json to write (a .md beside it); default benchmarks/results/cpu.json")
    p.add_argument("--child", choices=["sample", "train"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main)
