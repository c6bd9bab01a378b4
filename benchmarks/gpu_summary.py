"""The GPU check's summary (benchmarks/gpu_check.sh, CHECK=graphs): every target of the CUDA-graph
work beside what was measured, from the files the check wrote.

    python benchmarks/gpu_summary.py OUT_DIR RUNS_DIR     # writes OUT_DIR/summary.json and .md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mnist_diffusion.config import PRESETS
from mnist_diffusion.runs.store import read_metrics
from mnist_diffusion.runtime import describe_machine, matmul_rate
from mnist_diffusion.training.speed import step_flops_per_image

TARGETS = {
    "train_seconds": 10.0,
    "images_per_sec": 30_000,
    "command_seconds": 30.0,
    "sample_seconds": 0.5,
    "large_30_epochs_seconds": 180.0,
}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training(runs: Path, name: str) -> tuple[float | None, int | None]:
    """A finished run's training seconds and steps (its metrics' "done" line)."""
    folders = sorted(runs.glob(f"runs/*-{name}"))
    done = [r for r in read_metrics(folders[-1]) if r.get("done")] if folders else []
    return (done[-1]["train_seconds"], done[-1]["step"]) if done else (None, None)


def summarize(out: Path, runs: Path) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = PRESETS["default"]
    result: dict = {"machine": describe_machine(device).to_dict(), "runs": {}, "targets": TARGETS}
    for name in ("graphs", "eager-seed0", "eager-seed1"):
        ev, cmd = read_json(out / f"eval-{name}.json"), read_json(out / f"command-{name}.json")
        seconds, steps = training(runs, name)
        result["runs"][name] = {
            "train_seconds": seconds,
            "steps": steps,
            "images_per_sec": steps * cfg.train.batch_size / seconds if seconds else None,
            "command_seconds": cmd and cmd["command_seconds"],
            "fid": ev and ev["model"]["fid"],
            "floor_fid": ev and ev["real"]["fid"],
            "confident_share": ev and ev["model"]["confident_share"],
            "sample_seconds": ev and ev["seconds"]["sampling"],
        }
    speed = read_json(out / f"speed-{device.type}.json") or {}
    large = speed.get("train", {}).get("large, graphs") or speed.get("train", {}).get("large")
    if large:
        result["large_30_epochs_seconds"] = 30 * 60_000 / large["images_per_sec"]
    default = speed.get("train", {}).get("default, graphs")
    if default and device.type == "cuda":
        flops = step_flops_per_image(cfg) * cfg.train.batch_size
        bf16 = matmul_rate(device, torch.bfloat16, 8192)
        result["step"] = {
            "ms": default["step_ms"],
            "gflop": flops / 1e9,
            "bf16_matmul_tflops": bf16 / 1e3,
            "share_of_bf16_rate": flops / (default["step_ms"] / 1e3) / (bf16 * 1e9),
        }
    return result


def markdown(r: dict) -> str:
    def cell(value, fmt, target=None, below=True):
        if value is None:
            return "-"
        mark = "" if target is None else (" ✓" if (value < target if below else value >= target) else " ✗")
        return fmt.format(value) + mark

    g = r["runs"]["graphs"]
    lines = [
        f"GPU: {r['machine']['gpu']}",
        "",
        "| target | measured |",
        "|---|---:|",
        f"| default, 5 epochs, graphs: training ≤ {TARGETS['train_seconds']:.0f} s | "
        f"{cell(g['train_seconds'], '{:.1f} s', TARGETS['train_seconds'])} |",
        f"| ≥ {TARGETS['images_per_sec']:,} images/s | "
        f"{cell(g['images_per_sec'], '{:,.0f}', TARGETS['images_per_sec'], below=False)} |",
        f"| the whole `train --cuda-graphs` command < {TARGETS['command_seconds']:.0f} s | "
        f"{cell(g['command_seconds'], '{:.1f} s', TARGETS['command_seconds'])} |",
        f"| 10,000 samples, default sampler and guidance, < {TARGETS['sample_seconds']} s | "
        f"{cell(g['sample_seconds'], '{:.2f} s', TARGETS['sample_seconds'])} |",
        f"| large preset, 30 epochs < {TARGETS['large_30_epochs_seconds']:.0f} s (from its images/s) | "
        f"{cell(r.get('large_30_epochs_seconds'), '{:.0f} s', TARGETS['large_30_epochs_seconds'])} |",
    ]
    if "step" in r:
        s = r["step"]
        lines.append(
            f"| default step: {s['gflop']:.1f} GFLOP in {s['ms']:.2f} ms, of the bf16 rate "
            f"{s['bf16_matmul_tflops']:.0f} TFLOP/s | {s['share_of_bf16_rate']:.1%} |"
        )
    lines += [
        "",
        "| run | training s | images/s | FID (N = 10,000) | floor | confident | sampling s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x in r["runs"].items():
        lines.append(
            f"| {name} | {cell(x['train_seconds'], '{:.1f}')} | {cell(x['images_per_sec'], '{:,.0f}')} | "
            f"{cell(x['fid'], '{:.3f}')} | {cell(x['floor_fid'], '{:.3f}')} | "
            f"{cell(x['confident_share'], '{:.1%}')} | {cell(x['sample_seconds'], '{:.2f}')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    out, runs = Path(argv[0]), Path(argv[1])
    result = summarize(out, runs)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main(sys.argv[1:])
