"""What the benchmark scripts share: the machine a result was measured on, timing windows, the
results folder and how a result is written (JSON, and its Markdown table beside it or in a
README block), the kernels' instruction-set environment, how a script reports a bad flag, and
training steps of several variants timed against each other.
Each script imports these from here; no script imports another."""

from __future__ import annotations

import dataclasses
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from mnist_diffusion import __version__
from mnist_diffusion.errors import UserError
from mnist_diffusion.io import atomic_write_bytes, atomic_write_json, sha256_file
from mnist_diffusion.nets import count_parameters
from mnist_diffusion.runs.loader import LoadedRun
from mnist_diffusion.runs.store import WEIGHTS, read_metrics
from mnist_diffusion.runtime import describe_machine, sync
from mnist_diffusion.training.batches import Batch
from mnist_diffusion.training.learner import Learner

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SAMPLE_BATCH = {"cpu": 256, "cuda": 10_000}  # images per sampling batch, chosen for throughput

ISA_ENV = {  # kernels kept to an instruction set: ATen's dispatch, oneDNN, MKL
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def time_windows(
    step: Callable[[int], object], device: torch.device, windows: int, window_steps: int, warmup: int
) -> list[float]:
    """``step(i)`` for i = 0, 1, ...: ``warmup`` untimed calls, then seconds per call in each of
    ``windows`` windows of ``window_steps`` calls (the device synchronized at window edges)."""
    for i in range(warmup):
        step(i)
    durations = []
    for w in range(windows):
        sync(device)
        start = time.perf_counter()
        for i in range(window_steps):
            step(warmup + w * window_steps + i)
        sync(device)
        durations.append((time.perf_counter() - start) / window_steps)
    return durations


# --------------------------------------------------------------------------------------- the machine


def machine_info(device: torch.device) -> dict:
    """The machine a result was measured on, as the package describes it (runtime.describe_machine:
    the CPU model, its vector and bf16 units, cores, torch threads, the GPU, the git commit), and
    the versions."""
    machine = describe_machine(device)
    return {
        "cpu": machine.cpu,
        "vector_units": list(machine.vector_units),
        "bf16_units": machine.bf16_units,
        "cores": machine.cores,
        "torch_threads": machine.threads,
        "device": device.type,
        "gpu": machine.gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mnist_diffusion": __version__,
        "git_commit": machine.commit,
    }


def machine_line(results: dict) -> str:
    """The first line of a results table: the machine, the versions, the commit and the date."""
    m = results["machine"]
    gpu = f", {m['gpu']}" if m["gpu"] else ""
    units = "" if "bf16_units" not in m else "; bf16 units" if m["bf16_units"] else "; no bf16 units"
    return (
        f"**{m['device'].upper()}**: {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads{units}){gpu}; "
        f"torch {m['torch']}; mnistdiff {m['mnist_diffusion']}"
        + (f" at {m['git_commit']}" if m["git_commit"] else "")
        + f"; {results['date']}  "
    )


def run_info(run: LoadedRun) -> dict:
    """What a result measured on a trained run records of it: its name, network, schedule and weights."""
    cfg = run.cfg
    done = [r for r in read_metrics(run.path) if r.get("done")]
    return {
        "name": run.path.name,
        "path": str(run.path),
        "preset": cfg.preset,
        "arch": cfg.model.arch,
        "parameters": count_parameters(run.model),
        "timesteps": run.schedule.num_timesteps,
        "schedule": cfg.diffusion.schedule,
        "prediction": cfg.diffusion.prediction,
        "conditional": run.conditional,
        "guidance_kinds": dataclasses.asdict(run.guidance_kinds),
        "trained_steps": done[-1]["step"] if done else None,
        "weights_sha256": sha256_file(run.path / WEIGHTS),
    }


# --------------------------------------------------------------------------------------- results


def rate(x: float) -> str:
    """Images/s with as many digits as a reader needs."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.3g}"


def output_paths(stem: Path) -> dict[str, Path]:
    """The .json, .md and .png beside ``stem`` ("results/sweep-0.4" keeps its ".4"; a stem given
    with one of those three extensions loses it)."""
    if stem.suffix in (".json", ".md", ".png"):
        stem = stem.with_suffix("")
    return {ext: stem.with_name(stem.name + ext) for ext in (".json", ".md", ".png")}


def write_results(out: Path, results: dict, table: str) -> None:
    """A benchmark's results: ``out`` (JSON) and its markdown table beside it (``.md``), each
    written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, results)
    atomic_write_bytes(out.with_suffix(".md"), table.encode())


def update_readme(path: Path, name: str, table: str) -> None:
    """Replace the block between <!-- bench:NAME:start --> and <!-- bench:NAME:end -->."""
    begin, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise UserError(f"{path} has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{table}{end}{rest.split(end, 1)[1]}")


def run_script(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main()``: a bad flag or missing input is one line on stderr and exit 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def step_seconds(learner: Learner, batch: Batch, steps: int, start: int) -> float:
    """The median wall time of ``steps`` training steps on ``batch``."""
    times = []
    for i in range(steps):
        begin = time.perf_counter()
        learner.step(batch, start + i)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def compare_steps(
    learners: dict[str, Learner],
    batch: Batch | Mapping[str, Batch],
    rounds: int,
    block: int,
    rate: Callable[[], float] | None = None,
) -> tuple[dict[str, dict], list[float]]:
    """Each variant's median step time over ``rounds`` blocks of ``block`` steps, the variants'
    blocks alternating (order reversed each round), and the median of each round's speed ratio to
    the first variant (its step time over the variant's: above 1, the variant is faster). Every
    variant trains on ``batch``, or each on its own where it is a mapping by name (variants of
    another batch size). With ``rate`` (a function measuring the matrix rate), each round first
    measures it again, and the rates come back with the variants: a step's share of the rate can
    then be taken against the machine's pace in its own round (profile_step.py's ``paired_share``)."""
    names = list(learners)
    batch_of = batch if isinstance(batch, Mapping) else dict.fromkeys(names, batch)
    for name in names:  # warm-up, and torch.compile's compilation
        say(f"{name}: warm-up")
        step_seconds(learners[name], batch_of[name], 3, 0)
    blocks: dict[str, list[float]] = {name: [] for name in names}
    rates: list[float] = []
    for r in range(rounds):
        if rate is not None:
            rates.append(rate())
        for name in names if r % 2 == 0 else names[::-1]:
            blocks[name].append(step_seconds(learners[name], batch_of[name], block, 3 + r * block))
    first = names[0]
    return {
        name: {
            "step_ms": statistics.median(blocks[name]) * 1e3,
            "blocks_ms": [s * 1e3 for s in blocks[name]],
            "speed_vs_first": statistics.median(a / b for a, b in zip(blocks[first], blocks[name], strict=True)),
        }
        for name in names
    }, rates
