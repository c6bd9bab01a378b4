"""Where a training step's time goes on this machine, and what the step's variants are worth.

1. The profile: `torch.profiler` over a few steps of the default preset (Learner.step on MNIST),
   each op's own time put into one of the step's parts (the convolutions, GroupNorm, SiLU, the
   attention at 7x7, the linear layers, AdamW, the EMA, gradient clipping, everything else), with
   the FLOPs FlopCounterMode counts for each part and the rate the part reaches against the
   machine's matrix rate.
2. Variants of the same step, timed in one process in alternating blocks of steps (a process's
   pace moves more from one process to the next than within one): eager, `torch.compile`,
   channels-last weights and activations, both, and as a bound any of them without GroupNorm.
   Each round measures the matrix rate again, and each variant's share of it is also given
   against the rate of its own rounds.

    python benchmarks/profile_step.py
    python benchmarks/profile_step.py --isa avx2 --precision fp32 --variants eager,compile,channels-last
    python benchmarks/profile_step.py --isa avx2 --precision fp32 --variants compile,compile+no-norm
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import ISA_ENV, RESULTS_DIR, compare_steps, machine_info, machine_line, run_script, say, write_results

from mnist_diffusion.allocator import prefer_huge_pages
from mnist_diffusion.config import DEFAULT_DATA_DIR, PRESETS, RunConfig
from mnist_diffusion.errors import UserError
from mnist_diffusion.nets import unet
from mnist_diffusion.runtime import (
    DistInfo,
    autocast_dtype,
    describe_machine,
    measure_matmul_rate,
    precision_name,
    setup_device,
)
from mnist_diffusion.training.batches import Batch, Batches, load_training_set
from mnist_diffusion.training.learner import Learner
from mnist_diffusion.training.plan import StepPlan
from mnist_diffusion.training.speed import step_flop_counts

# The parts of a step, each named by the aten ops that make it (first match wins; the rest is "other").
PARTS = {
    "convolutions": ("convolution",),
    "GroupNorm": ("group_norm",),
    "SiLU": ("silu",),
    "attention": ("bmm", "softmax", "scaled_dot_product", "flash_attention"),
    "linear layers": ("addmm", "aten::mm", "mmbackward"),
    "AdamW": ("adam",),
    "EMA": ("lerp",),
    "gradient clipping": ("norm", "clamp", "_foreach_mul"),
}
# A variant is "eager" or one or more of these joined by "+" (compile+channels-last). "no-norm" is a
# bound, not a network anyone trains: the GroupNorms left out, to see what the rest of the step costs.
VARIANT_PARTS = ("compile", "channels-last", "no-norm")


def part_of(op: str) -> str:
    """The part of the step an op (a profiler event's name, "aten::silu_backward") belongs to."""
    op = op.lower()
    return next((part for part, keys in PARTS.items() if any(k in op for k in keys)), "other")


def flops_by_part(cfg: RunConfig) -> dict[str, float]:
    """FLOPs of one training step (forward, loss, backward) per part."""
    out: dict[str, float] = {}
    for op, flops in step_flop_counts(cfg).items():
        part = part_of(op.replace("aten.", "aten::"))  # aten.convolution -> aten::convolution
        out[part] = out.get(part, 0.0) + flops
    return out


def variant_parts(variant: str) -> set[str] | None:
    """The parts of a variant's name ("compile+no-norm": compile, no-norm), or None if it is not one."""
    if variant == "eager":
        return set()
    parts = variant.split("+")
    return set(parts) if parts and all(p in VARIANT_PARTS for p in parts) else None


def training_batches(cfg: RunConfig, data_dir: Path) -> Batches:
    """The batches of a run of ``cfg`` on the CPU, as training draws them."""
    info = DistInfo()
    images, labels = load_training_set(data_dir, info, log=lambda m: None)
    return Batches(images, labels, cfg, info, torch.device("cpu"))


def make_learner(cfg: RunConfig, variant: str, steps_per_epoch: int) -> Learner:
    """The network, EMA and optimizer of a run of ``cfg`` on the CPU, built as ``variant`` says."""
    parts = variant_parts(variant) or set()
    total = StepPlan.of(cfg, steps_per_epoch, check_every=1).total_steps  # the learning rate follows the run's plan
    norm = unet.no_norm if "no-norm" in parts else unet.group_norm
    learner = Learner(
        cfg,
        torch.device("cpu"),
        DistInfo(),
        total_steps=total,
        compile="compile" in parts,
        log=lambda m: None,
        network=lambda model: unet.UNet(model, norm=norm),  # the default preset's network, with or without GroupNorm
    )
    if "channels-last" in parts:
        learner.model.to(memory_format=torch.channels_last)
    learner.model.train()
    return learner


def profile(learner: Learner, batch: Batch, steps: int) -> dict[str, float]:
    """Milliseconds per step of each part: the sum of its ops' own (self) CPU time."""
    for i in range(3):  # warm-up: oneDNN's primitives, the allocator
        learner.step(batch, i)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            learner.step(batch, 3 + i)
    out: dict[str, float] = {}
    for event in prof.key_averages():
        part = part_of(event.key)
        out[part] = out.get(part, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return out


def onednn_primitives(learner: Learner, batch: Batch, start: int) -> dict[str, dict[str, float]]:
    """What oneDNN runs in one training step, from its verbose log: per primitive kind
    (convolution, reorder, ...) the number of calls and their milliseconds. Reorders convert
    activations and weights between PyTorch's layout and oneDNN's blocked one."""
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)  # oneDNN writes its log from C++ to the process's stdout
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                learner.step(batch, start)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().splitlines()
    out: dict[str, dict[str, float]] = {}
    for line in lines:
        fields = line.split(",")
        if len(fields) > 6 and fields[0] == "onednn_verbose" and fields[3] == "exec":
            kind = out.setdefault(fields[5], {"calls": 0, "ms": 0.0})
            kind["calls"] += 1
            kind["ms"] += float(fields[-1])
    return out


def paired_share(step_gflop: float, variant: dict, rates: list[float]) -> float | None:
    """The median over rounds of a variant's step GFLOP/s over the matrix rate of the same round
    (None without those rates)."""
    if not rates:
        return None
    return statistics.median(
        step_gflop / (ms / 1e3) / rate for ms, rate in zip(variant["blocks_ms"], rates, strict=True)
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    isa_env = ISA_ENV.get(args.isa, {})
    if any(os.environ.get(k) != v for k, v in isa_env.items()):  # the kernels are chosen at start-up: start again
        os.execve(
            sys.executable,
            [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
            {**os.environ, **isa_env},
        )
    prefer_huge_pages()  # as train does, before the first tensor
    variants = args.variants.split(",") if args.variants else []
    if unknown := [v for v in variants if variant_parts(v) is None]:
        raise UserError(
            f"unknown variant(s) {', '.join(unknown)}: each is eager or parts joined by + ({', '.join(VARIANT_PARTS)})"
        )
    device = setup_device("cpu")
    cfg = PRESETS["default"]
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, precision=args.precision, batch_size=args.batch_size or cfg.train.batch_size
        ),
    )
    dtype = autocast_dtype(cfg.train.precision, device)
    flops = flops_by_part(cfg)
    total_flops = sum(flops.values())
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["profile_step.py", *argv]),
        "machine": {**machine_info(device), **describe_machine(device).to_dict()},
        "isa": torch.backends.cpu.get_cpu_capability(),
        "precision": precision_name(dtype),
        "batch": cfg.train.batch_size,
        "step_gflop": total_flops / 1e9,
        "matmul_gflops": measure_matmul_rate(device, dtype or torch.float32),
    }
    batches = training_batches(cfg, args.data_dir)
    batch = batches.batch_for(0)  # every step of every variant trains on this one batch
    say(f"profiling {args.profile_steps} steps")
    eager = make_learner(cfg, "eager", batches.steps_per_epoch)
    ms = profile(eager, batch, args.profile_steps)
    if args.onednn:
        results["onednn"] = onednn_primitives(eager, batch, 3 + args.profile_steps)
    results["parts"] = {
        part: {"ms": ms.get(part, 0.0), "gflop": flops.get(part, 0.0) / 1e9} for part in [*PARTS, "other"]
    }
    if variants:
        learners = {name: make_learner(cfg, name, batches.steps_per_epoch) for name in variants}
        yardstick = lambda: measure_matmul_rate(device, dtype or torch.float32, repeats=3)  # noqa: E731
        results["variants"], results["rounds_matmul_gflops"] = compare_steps(
            learners, batch, args.rounds, args.block, yardstick
        )
    table = markdown(results)
    write_results(args.out or RESULTS_DIR / "profile-step.json", results, table)
    print(table)
    return results


def markdown(results: dict) -> str:
    rate = results["matmul_gflops"]
    parts = results["parts"]
    step_ms = sum(p["ms"] for p in parts.values())
    lines = [
        machine_line(results),
        f"`{results['command']}`",
        "",
        f"kernels {results['isa']}, {results['precision']}; batch {results['batch']}, "
        f"{results['step_gflop']:.1f} GFLOP a step; matrix rate {rate:.0f} GFLOP/s; the profiled step "
        f"{step_ms:.1f} ms: {results['step_gflop'] / step_ms * 1e3 / rate:.0%} of the matrix rate",
        "",
        "| part of the step | ms per step | share of the step | GFLOP | GFLOP/s | of the matrix rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in sorted(parts.items(), key=lambda kv: -kv[1]["ms"]):
        gflops = p["gflop"] / p["ms"] * 1e3 if p["ms"] and p["gflop"] else None
        speed = "-" if gflops is None else f"{gflops:.0f} | {gflops / rate:.0%}"
        lines.append(
            f"| {name} | {p['ms']:.1f} | {p['ms'] / step_ms:.1%} | {p['gflop']:.2f} | "
            + (speed if gflops is not None else "- | -")
            + " |"
        )
    if results.get("onednn"):
        lines += ["", "| oneDNN in one eager step | calls | ms |", "|---|---:|---:|"]
        for kind, v in sorted(results["onednn"].items(), key=lambda kv: -kv[1]["ms"]):
            lines.append(f"| {kind} | {v['calls']:.0f} | {v['ms']:.1f} |")
    if results.get("variants"):
        first = next(iter(results["variants"]))
        lines += [
            "",
            f"| variant | step ms (median of blocks) | images/s | of the matrix rate | of the rate beside it "
            f"| speed vs {first} |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, v in results["variants"].items():
            share = results["step_gflop"] / v["step_ms"] * 1e3 / rate
            paired = paired_share(results["step_gflop"], v, results.get("rounds_matmul_gflops", []))
            lines.append(
                f"| {name} | {v['step_ms']:.1f} | {results['batch'] / v['step_ms'] * 1e3:.1f} | {share:.0%} | "
                f"{'-' if paired is None else f'{paired:.0%}'} | {v['speed_vs_first']:.3f}x |"
            )
        lines += [
            "",
            "Of the matrix rate: the median step against the rate measured at the start. Of the rate "
            "beside it: the median over rounds of each block's step against the rate measured in its round.",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="the step's precision (auto: bf16 where the CPU has bf16 units)",
    )
    p.add_argument(
        "--isa",
        choices=["native", *ISA_ENV],
        default="native",
        help="the instruction set the kernels may use (avx2: a CPU without AVX-512 or bf16)",
    )
    p.add_argument("--batch-size", type=int, default=0, help="training batch (0: the preset's, 64)")
    p.add_argument("--profile-steps", type=int, default=10, help="steps under the profiler")
    p.add_argument(
        "--variants",
        default="eager,compile,channels-last",
        help=f"variants to time against the first: eager, or parts joined by + ({', '.join(VARIANT_PARTS)}; "
        "no-norm leaves the GroupNorms out, a bound); empty: none",
    )
    p.add_argument("--rounds", type=int, default=6, help="blocks of steps per variant")
    p.add_argument("--block", type=int, default=10, help="steps per block")
    p.add_argument(
        "--onednn",
        action="store_true",
        help="also count oneDNN's primitives in one eager step (ONEDNN_VERBOSE): convolutions and the "
        "reorders between PyTorch's layout and oneDNN's",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument(
        "--out", type=Path, help="the .json to write (a .md beside it); default benchmarks/results/profile-step.json"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main)
