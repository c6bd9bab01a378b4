"""The default preset's ablation: short runs of the candidate recipes, each scored by `mnistdiff eval`.

Each variant trains --epochs (default 1) through the CLI with the given flags, then is scored
with N samples (dpmpp-2m, 20 evaluations, even spacing, no guidance: the sampler of the ablation
table in docs/RESULTS.md). The network is pinned to that table's: 16/32/64 channels in fp32.
Variants run --parallel at a time with one thread each (on a 2-core CPU two single-thread runs
go faster together than one two-thread run).

    python benchmarks/ablation.py --epochs 1 --n 1000 --out benchmarks/results/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _flags(prediction: str, weighting: str, batch: int, lr: str) -> list[str]:
    return ["--prediction", prediction, "--loss-weighting", weighting, "--batch-size", str(batch), "--lr", lr]


# Every variant shares the UNet of the ablation (16/32/64 channels, fp32, no pixel clusters),
# cosine T=1000, warm-up and EMA; only these flags differ.
NETWORK = ["--channel-mult", "1,2,4", "--precision", "fp32", "--clusters", "0"]
VARIANTS: dict[str, list[str]] = {
    "eps, batch 128, lr 1e-3": _flags("eps", "none", 128, "1e-3"),
    "eps + min-SNR, batch 128, lr 1e-3": _flags("eps", "min-snr", 128, "1e-3"),
    "eps, batch 64, lr 1e-3": _flags("eps", "none", 64, "1e-3"),
    "v + min-SNR, batch 128, lr 1e-3": _flags("v", "min-snr", 128, "1e-3"),
    "v + min-SNR, batch 64, lr 1e-3": _flags("v", "min-snr", 64, "1e-3"),
    "v + min-SNR, batch 64, lr 2e-3 (the default)": _flags("v", "min-snr", 64, "2e-3"),
}
CLI = [sys.executable, "-m", "mnist_diffusion"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n", type=int, default=1000, help="samples scored per variant")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--sampler", default="dpmpp-2m", help="sampler of the scoring eval (the table's: dpmpp-2m)")
    p.add_argument("--spacing", default="1", help="its timestep spacing power (the table's: 1, even)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation"))
    p.add_argument("--only", default="", help="comma-separated variant numbers (1-based) to run")
    args = p.parse_args(argv)
    chosen = [v for i, v in enumerate(VARIANTS, 1) if not args.only or str(i) in args.only.split(",")]
    artifacts = Path(tempfile.mkdtemp(prefix="mnistdiff-ablation-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, str] = {}
    for start in range(0, len(chosen), args.parallel):
        batch = chosen[start : start + args.parallel]
        procs = [
            subprocess.Popen(
                [
                    *CLI,
                    "train",
                    "--epochs",
                    str(args.epochs),
                    "--run-name",
                    f"v{start + i}",
                    *NETWORK,
                    "--artifacts-dir",
                    str(artifacts),
                    "--data-dir",
                    args.data_dir,
                    *VARIANTS[name],
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
            for i, name in enumerate(batch)
        ]
        for name, proc in zip(batch, procs, strict=True):
            out, _ = proc.communicate()
            if proc.returncode:
                sys.exit(f"training {name!r} failed with exit code {proc.returncode}")
            runs[name] = out.strip().splitlines()[-1]
    rows = []
    for name, run in runs.items():
        out = subprocess.run(
            [
                *CLI,
                "eval",
                "--run",
                run,
                "-n",
                str(args.n),
                "--sampler",
                args.sampler,
                "--spacing",
                args.spacing,
                "--autoguidance",
                "1",
                "--cluster-guidance",
                "1",
                "--precision",
                "fp32",
                "--json",
                "--data-dir",
                args.data_dir,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        m = r["model"]
        seconds = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()][-1]
        rows.append(
            {
                "variant": name,
                "flags": " ".join(VARIANTS[name]),
                "fid": m["fid"],
                "floor_fid": r["real"]["fid"],
                "precision": m["precision"],
                "recall": m["recall"],
                "confident_share": m["confident_share"],
                "class_histogram": m["class_histogram"],
                "train_seconds": seconds.get("train_seconds"),
            }
        )
        print(f"{name}: FID {m['fid']:.2f} (floor {r['real']['fid']:.2f})", flush=True)
    lines = [
        f"| variant ({args.epochs} epoch, N = {args.n}) | FID | real-data FID | precision | recall | confident > 0.9 |"
        " digit histogram |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['fid']:.2f} | {r['floor_fid']:.2f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {100 * r['confident_share']:.1f}% | {r['class_histogram']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(
        json.dumps({"epochs": args.epochs, "n": args.n, "rows": rows}, indent=2)
    )
    args.out.with_name(args.out.name + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
