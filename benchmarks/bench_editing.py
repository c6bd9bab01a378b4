"""Editing quality for one trained run: how often the shipped classifier reads an inpainted digit
as its true label, and how well DDIM inversion gives digits back. `make bench-editing` runs it.

(a) Completion accuracy: each of the first N MNIST test digits has one part missing (each standard
mask in turn: left, right, top, bottom, center) and is completed once by ``inpaint`` (RePaint, the
path of `mnistdiff inpaint`); the share of completions the feature net of `mnistdiff eval` reads
as the digit's label (the argmax of its class probabilities) stands beside the same share for the
masked input with the hole left black (the floor: what the visible part alone says) and for the
real digit (the ceiling). A conditional run completes without a label.
(b) Inversion: ``invert`` then ``reconstruct`` (the path of `mnistdiff invert`) at 20, 50 and 100
steps, the reconstruction's MSE and PSNR against the digit.

It writes a JSON and a markdown table, saved again after every row, so a run cut short keeps
what it measured. benchmarks/README.md says more.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import torch
from common import machine_info, machine_line, output_paths, run_info, run_script, say, update_readme

from mnist_diffusion.config import INPAINT_JUMPS, INVERT_STEPS, Guidance, SamplingConfig, inpaint_resample
from mnist_diffusion.data.mnist import DEFAULT_DATA_DIR, as_unit, test_digits
from mnist_diffusion.evaluation.features import extract
from mnist_diffusion.evaluation.scoring import feature_net
from mnist_diffusion.io import atomic_write_bytes, atomic_write_json
from mnist_diffusion.pictures.inputs import MASKS, parse_mask
from mnist_diffusion.runs.loader import load_run
from mnist_diffusion.runs.store import DEFAULT_ARTIFACTS_DIR, resolve_run
from mnist_diffusion.runtime import setup_device
from mnist_diffusion.sampling.editing import (
    inpaint,
    inpaint_settings,
    invert,
    invert_settings,
    reconstruct,
    reconstruction_error,
)

RESULTS = Path(__file__).resolve().parent / "results" / "editing"  # + .json, .md


def read_as(net, images: torch.Tensor) -> torch.Tensor:
    """The digit the feature net reads in each of ``images`` [N x 1 x 28 x 28] in [0, 1]: [N]."""
    return extract(net, images)[1].argmax(1)


def completion_row(run, images, labels, mask: str, args, net) -> dict:
    """Inpaint every digit once with ``mask``'s part missing; the share read as the true label,
    beside the floor (the hole left black)."""
    missing = parse_mask(mask)
    start = time.perf_counter()
    repaint = {"jumps": args.jumps, "resample": args.resample, "match": args.match}
    completed = inpaint(run, images, missing, args.sampling, **repaint, progress=not args.no_progress)[:, 0]
    seconds = time.perf_counter() - start
    holed = images.masked_fill(missing, 0.0)
    return {
        "mask": mask,
        "n": len(images),
        "accuracy": (read_as(net, completed) == labels).float().mean().item(),
        "floor": (read_as(net, holed) == labels).float().mean().item(),
        "seconds": seconds,
    }


def inversion_row(run, images, steps: int, args) -> dict:
    """Invert and reconstruct every digit at ``steps``; the mean MSE and PSNR (dB)."""
    start = time.perf_counter()
    noise = invert(run, images, args.sampling, steps=steps, progress=not args.no_progress)
    back = reconstruct(run, noise, args.sampling, steps=steps, progress=not args.no_progress)
    mse, psnr = reconstruction_error(images, back)
    return {
        "steps": steps,
        "n": len(images),
        "mse": mse.mean().item(),
        "psnr": psnr.mean().item(),
        "psnr_median": psnr.median().item(),
        "seconds": time.perf_counter() - start,
    }


def markdown(results: dict) -> str:
    run, s = results["run"], results["settings"]
    kind = "conditional (completed without a label)" if run["conditional"] else "unconditional"
    lines = [
        machine_line(results),
        f"`{results['command']}`  ",
        f"Run `{run['name']}`: preset {run['preset']}, {run['parameters']:,} parameters, T = {run['timesteps']}, "
        f"{kind}; the first {s['n']:,} MNIST test digits; RePaint: {results['inpainting']['steps']} ancestral steps "
        f"(spacing {results['inpainting']['spacing']:g}), j = {s['jumps']}, r = {s['resample']}"
        + (", clusters matched to the visible pixels" if s["match_clusters"] else "")
        + (f", {results['inpainting']['guidance']}" if results["inpainting"]["guidance"] else "")
        + f"; seed {s['seed']}",
        "",
        "| mask | completions read as the true digit | masked input, hole black (floor) | real digit (ceiling) "
        "| seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    ceiling = results["ceiling"]
    for r in results["completion"]:
        lines.append(f"| {r['mask']} | {r['accuracy']:.1%} | {r['floor']:.1%} | {ceiling:.1%} | {r['seconds']:.1f} |")
    lines += [
        "",
        "| inversion steps | digits | PSNR (dB), mean | PSNR, median | MSE | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["inversion"]:
        lines.append(
            f"| {r['steps']} | {r['n']:,} | {r['psnr']:.2f} | {r['psnr_median']:.2f} | {r['mse']:.2e} "
            f"| {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "Read by the shipped feature net (`mnistdiff eval`'s): the argmax of its class probabilities. "
        "Inversion: DDIM inversion, then DDIM back, evenly spaced steps; PSNR of pixels in [0, 1].",
    ]
    if results["cut_short"]:
        lines += ["", "_Cut short: not every planned row was measured._"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", help="run folder, name or number (default: the latest)")
    p.add_argument("--artifacts-dir", type=Path, default=DEFAULT_ARTIFACTS_DIR, help="folder holding runs/")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding MNIST/raw")
    p.add_argument("--n", type=int, default=1000, help="test digits (the first N)")
    p.add_argument("--n-invert", type=int, help="test digits for the inversion rows (default: --n)")
    p.add_argument("--masks", default=",".join(MASKS), help=f"comma-separated, from {', '.join(MASKS)}")
    p.add_argument("--steps", type=int, help="RePaint's steps (default: DDIM's, 50)")
    p.add_argument("--jumps", type=int, default=INPAINT_JUMPS, help="RePaint's j, as inpaint --jumps")
    p.add_argument(
        "--resample", type=int, default=None, help="RePaint's r, as inpaint --resample (default: 1 matched, else 5)"
    )
    p.add_argument("--invert-steps", default=",".join(map(str, INVERT_STEPS)), help="inversion step counts")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    for flag, kind in (("--autoguidance", "auto"), ("--label-guidance", "labels"), ("--cluster-guidance", "clusters")):
        p.add_argument(
            flag,
            type=float,
            help=f"as `inpaint` {flag} (default {Guidance.DEFAULTS[kind]:g} where the run has it; 1: none)",
        )
    p.add_argument("--match-clusters", action="store_true", help="as `inpaint` --match-clusters (clustered runs)")
    p.add_argument("--batch-size", type=int, default=500, help="images per forward pass")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if there is one")
    p.add_argument("--out", type=Path, default=RESULTS, help="path stem of the .json and .md to write")
    p.add_argument("--readme", type=Path, help="also put the table into this file's bench:editing block")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    if not masks or any(m not in MASKS for m in masks):
        p.error(f"--masks takes names from {', '.join(MASKS)} (got {args.masks!r})")
    try:
        counts = sorted({int(s) for s in args.invert_steps.split(",") if s.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        p.error(f"--invert-steps takes comma-separated positive integers (got {args.invert_steps!r})")
    args.masks, args.invert_steps = list(dict.fromkeys(masks)), counts
    args.n_invert = args.n if args.n_invert is None else args.n_invert
    args.resample = inpaint_resample(args.resample, args.match_clusters)
    if min(args.n, args.n_invert, args.jumps, args.resample, args.batch_size) < 1:
        p.error("--n, --n-invert, --jumps, --resample and --batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup_device(args.device)
    run = load_run(resolve_run(args.run, args.artifacts_dir), device)
    guidance = Guidance(auto=args.autoguidance, labels=args.label_guidance, clusters=args.cluster_guidance)
    args.sampling = SamplingConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size, guidance=guidance)
    args.match = run.cluster_matcher(args.data_dir, log=say) if args.match_clusters else None
    settings = inpaint_settings(
        run, args.sampling, matched=args.match_clusters
    )  # a setting the run cannot take fails here
    pixels, labels = test_digits(args.data_dir, list(range(max(args.n, args.n_invert))))
    images = as_unit(pixels)
    net, _ = feature_net(device)
    top = run.schedule.num_timesteps
    skipped = [s for s in args.invert_steps if s > top]
    if skipped:
        say(f"skipping {', '.join(map(str, skipped))} inversion steps: more than the run's T = {top}")
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["bench_editing.py", *argv]),
        "machine": machine_info(device),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v.to_dict() if isinstance(v, SamplingConfig) else v)
            for k, v in vars(args).items()
            if k != "match"
        },
        "run": run_info(run),
        "inpainting": {
            "steps": settings.steps,
            "spacing": settings.spacing,
            "guidance": settings.guidance.describe(),
            "sampling": settings.to_dict(),
        },
        "inversion_sampling": invert_settings(run, args.sampling).to_dict(),
        "ceiling": (read_as(net, images[: args.n]) == labels[: args.n]).float().mean().item(),
        "completion": [],
        "inversion": [],
        "cut_short": True,
    }
    paths = output_paths(args.out)
    paths[".json"].parent.mkdir(parents=True, exist_ok=True)

    def save() -> str:  # after every row, so a run cut short keeps what it measured
        table = markdown(results)
        atomic_write_json(paths[".json"], results)
        atomic_write_bytes(paths[".md"], table.encode())
        return table

    say(
        f"{run.path.name} on {device}: {args.n:,} digits, masks {', '.join(args.masks)}; real digits read right: "
        f"{results['ceiling']:.1%}"
    )
    try:
        for mask in args.masks:
            row = completion_row(run, images[: args.n], labels[: args.n], mask, args, net)
            results["completion"].append(row)
            save()
            say(f"mask {mask}: {row['accuracy']:.1%} read right (floor {row['floor']:.1%}), {row['seconds']:.1f} s")
        for steps in (s for s in args.invert_steps if s <= top):
            row = inversion_row(run, images[: args.n_invert], steps, args)
            results["inversion"].append(row)
            save()
            say(f"inversion at {steps} steps: PSNR {row['psnr']:.2f} dB, {row['seconds']:.1f} s")
    except KeyboardInterrupt:
        say(f"interrupted: the rows measured so far are in {paths['.json']}")
        raise SystemExit(130) from None
    results["cut_short"] = False
    table = save()
    print(table)
    if args.readme:
        update_readme(args.readme, "editing", table)
    say(f"wrote {paths['.json']} and .md")
    return results


if __name__ == "__main__":
    run_script(main)
