"""Sample quality against cost for one trained run: FID and sampling wall time of DDPM, DDIM and
DPM-Solver++(2M) at 10, 20, 50, 100 and 1000 model evaluations. `make bench-samplers` runs it.

Every row draws N samples through ``generate`` (the path of ``mnistdiff sample``) and scores them
with ``evaluate_images`` (the path of ``mnistdiff eval``), beside the real-data floor at the same N.
It writes a JSON, a markdown table and a plot (FID and wall time against model evaluations), saved
again after every row, so a run cut short keeps what it measured. benchmarks/README.md says more.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

import matplotlib.pyplot as plt
import torch
from common import (
    SAMPLE_BATCH,
    machine_info,
    machine_line,
    output_paths,
    rate,
    run_info,
    run_script,
    say,
    update_readme,
)
from matplotlib import ticker
from tqdm.auto import tqdm

from mnist_diffusion.config import Guidance, SamplerName, SamplingConfig
from mnist_diffusion.data.mnist import DEFAULT_DATA_DIR
from mnist_diffusion.errors import UserError
from mnist_diffusion.evaluation.scoring import MIN_SAMPLES, RealData, evaluate_images
from mnist_diffusion.io import atomic_write_bytes, atomic_write_json
from mnist_diffusion.pictures.figures import save_figure
from mnist_diffusion.runs.loader import LoadedRun, load_run
from mnist_diffusion.runs.store import DEFAULT_ARTIFACTS_DIR, resolve_run
from mnist_diffusion.runtime import setup_device, sync
from mnist_diffusion.sampling.generate import generate, resolve_for

SAMPLERS = get_args(SamplerName)

RESULTS = Path(__file__).resolve().parent / "results" / "samplers"  # + .json, .md, .png
EVALUATIONS = (10, 20, 50, 100, 1000)  # model evaluations per image for DDIM and DPM-Solver++
FULL_LENGTH = 1000  # rows with this many evaluations or more (or the run's T, if smaller) use --n-1000
TARGETS = {
    (s, e): r for s in ("dpmpp-2m", "dpmpp-2m-sde") for e, r in ((20, 1.10), (10, 1.30))
}  # the most FID / DDPM's FID at the same N
RECOMMEND_WITHIN = 1.10  # recommend the cheapest row whose FID is within 10% of the best at its N
COLORS = {"ddpm": "tab:red", "ddim": "tab:blue", "dpmpp-2m": "tab:green", "dpmpp-2m-sde": "tab:purple"}


@dataclass(frozen=True)
class Row:
    """One measurement: N samples from ``sampler`` at ``evaluations`` model evaluations each."""

    sampler: str
    evaluations: int
    n: int


def plan_rows(
    samplers: list[str],
    evaluations: list[int],
    num_timesteps: int,
    n: int,
    n_1000: int,
    compare: bool = True,
    ddpm_first: bool = False,
) -> list[Row]:
    """The rows to measure, cheapest first (a run cut short keeps the most rows).

    DDPM runs once, at the run's T. DDIM and DPM-Solver++ run at each count up to T. Rows at
    ``min(FULL_LENGTH, T)`` evaluations or more draw ``n_1000`` samples, the others ``n``; with
    ``compare`` and ``n_1000 < n``, the shorter DDIM/DPM-Solver++ rows are also run at ``n_1000``,
    so that they have a DDPM row of the same N to compare with. With ``ddpm_first`` the DDPM row
    comes first.
    """
    full = min(FULL_LENGTH, num_timesteps)
    rows = []
    for sampler in samplers:
        counts = [num_timesteps] if sampler == "ddpm" else [e for e in evaluations if e <= num_timesteps]
        for e in counts:
            rows.append(Row(sampler, e, n_1000 if e >= full else n))
            if compare and "ddpm" in samplers and sampler != "ddpm" and e < full and n_1000 < n:
                rows.append(Row(sampler, e, n_1000))
    # ``ddpm_first``: the reference that every ratio needs comes first, for a run with a hard time limit.
    return sorted(rows, key=lambda r: (ddpm_first and r.sampler != "ddpm", r.evaluations * r.n))


# --------------------------------------------------------------------------------------- measuring


def measure(run: LoadedRun, row: Row, args, real: RealData, device: torch.device) -> dict:
    """Draw ``row.n`` samples (timed), then score them against the MNIST test set, beside the
    real-data floor at the same N. A conditional run samples the balanced labels ``i % 10``."""
    labels = torch.arange(row.n) % 10 if run.conditional else None
    batches = math.ceil(row.n / args.batch_size)
    desc = f"{row.sampler} x{row.evaluations}, N={row.n}"
    with tqdm(
        total=batches * row.evaluations,
        desc=desc,
        unit="step",
        disable=args.no_progress or None,
        mininterval=1.0,
        leave=False,
    ) as bar:
        sync(device)
        start = time.perf_counter()
        settings = dataclasses.replace(
            args.sampling,
            sampler=row.sampler,
            steps=None if row.sampler == "ddpm" else row.evaluations,
            spacing=None if row.sampler == "ddpm" else args.sampling.spacing,
        )
        images = generate(run, row.n, settings, labels=labels, callback=lambda *_: bar.update())
        sample_s = time.perf_counter() - start  # generate returns CPU tensors, so a GPU is done
    start = time.perf_counter()
    result = evaluate_images(images, labels=labels, seed=args.seed, device=device, reference=real)
    model, floor = result["model"], result["real"]
    return {
        **asdict(row),
        "fid": model["fid"],
        "kid_mean": model["kid_mean"],
        "kid_std": model["kid_std"],
        "precision": model["precision"],
        "recall": model["recall"],
        "floor_n": result["n_floor"],
        "floor_fid": floor["fid"],
        "floor_kid_mean": floor["kid_mean"],
        "floor_precision": floor["precision"],
        "floor_recall": floor["recall"],
        "sample_seconds": sample_s,
        "images_per_sec": row.n / sample_s,
        "metric_seconds": time.perf_counter() - start,
    }


def compare_with_ddpm(rows: list[dict]) -> None:
    """Set each row's ``fid_vs_ddpm`` (FID / the DDPM row's FID at the same N, or None) and, where
    TARGETS holds one, ``target`` and ``meets_target``."""
    ddpm = {r["n"]: r["fid"] for r in rows if r["sampler"] == "ddpm"}
    for r in rows:
        base = ddpm.get(r["n"])
        r["fid_vs_ddpm"] = r["fid"] / base if base else None
        r["target"] = TARGETS.get((r["sampler"], r["evaluations"]))
        r["meets_target"] = None if r["target"] is None or r["fid_vs_ddpm"] is None else r["fid_vs_ddpm"] <= r["target"]


def recommend(rows: list[dict]) -> list[dict]:
    """Per N, largest first: the cheapest row (fewest evaluations, then lowest FID) whose FID is
    within RECOMMEND_WITHIN of the best FID at that N."""
    out = []
    for n in sorted({r["n"] for r in rows}, reverse=True):
        group = [r for r in rows if r["n"] == n]
        best = min(group, key=lambda r: r["fid"])
        ok = [r for r in group if r["fid"] <= best["fid"] * RECOMMEND_WITHIN]
        pick = min(ok, key=lambda r: (r["evaluations"], r["fid"]))  # same evaluations, same cost
        out.append(
            {
                "n": n,
                "sampler": pick["sampler"],
                "evaluations": pick["evaluations"],
                "fid": pick["fid"],
                "best": {"sampler": best["sampler"], "evaluations": best["evaluations"], "fid": best["fid"]},
            }
        )
    return out


def recommendation_line(rec: dict) -> str:
    best = rec["best"]
    head = (
        f"recommendation (N = {rec['n']:,}): {rec['sampler']} at {rec['evaluations']} evaluations, FID {rec['fid']:.3f}"
    )
    if (best["sampler"], best["evaluations"]) == (rec["sampler"], rec["evaluations"]):
        return f"{head}, the best at this N"
    return (
        f"{head}, within {RECOMMEND_WITHIN - 1:.0%} of the best at this N "
        f"({best['sampler']} at {best['evaluations']}, FID {best['fid']:.3f})"
    )


# --------------------------------------------------------------------------------------- report


def table_order(rows: list[dict]) -> list[dict]:
    """Largest N first, then by sampler and evaluations."""
    return sorted(rows, key=lambda r: (-r["n"], SAMPLERS.index(r["sampler"]), r["evaluations"]))


def seconds(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def ratio_cell(r: dict) -> str:
    if r["fid_vs_ddpm"] is None:
        return "-"
    if r["target"] is None:
        return f"{r['fid_vs_ddpm']:.2f}"
    return f"{r['fid_vs_ddpm']:.2f} {'✓' if r['meets_target'] else '✗'} (≤ {r['target']:.2f})"


def spacing_note(spacing: float | None) -> str:
    return f"{spacing:g}" if spacing is not None else "none (DDPM only)"


def guidance_label(results: dict) -> str:
    """ "autoguidance 2", "label guidance 2", "autoguidance 2 + cluster guidance 1.6", or "" for
    unguided sampling: the guidance the rows were drawn with."""
    return Guidance(**results["settings"]["sampling"]["guidance"]).describe()


def markdown(results: dict) -> str:
    run, rows = results["run"], results["rows"]
    cond = "conditional" if run["conditional"] else "unconditional"
    if guidance_label(results):
        cond += ", " + guidance_label(results)
    lines = [
        machine_line(results),
        f"`{results['command']}`  ",
        f"Run `{run['name']}`: preset {run['preset']}, {run['arch']}, {run['parameters']:,} parameters, "
        f"T = {run['timesteps']} ({run['schedule']}, {run['prediction']} prediction), {cond}, "
        f"{run['trained_steps'] or '?'} training steps; weights sha256 {run['weights_sha256'][:12]}; "
        f"sampling batch {results['settings']['batch_size']}, seed {results['settings']['seed']}, "
        f"timestep spacing power {spacing_note(results['settings']['sampling']['spacing'])}",
        "",
        "| sampler | evaluations | N | FID | real-data FID at N | FID / DDPM | KID x 1000 | precision | recall "
        "| sampling s | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table_order(rows):
        lines.append(
            f"| {r['sampler']} | {r['evaluations']} | {r['n']:,} | {r['fid']:.3f} | {r['floor_fid']:.3f} "
            f"| {ratio_cell(r)} | {1000 * r['kid_mean']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
            f"| {seconds(r['sample_seconds'])} | {rate(r['images_per_sec'])} |"
        )
    lines += [
        "",
        "FID, KID, precision and recall depend on N: compare rows only at the same N, and each FID with "
        "the real-data floor beside it (N real training images scored the same way).",
    ]
    if len(rows) < len(results["plan"]):
        lines += ["", f"_Cut short: {len(rows)} of {len(results['plan'])} planned rows measured._"]
    lines += [""] + [f"- {recommendation_line(rec)}" for rec in results["recommendation"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Left: FID against model evaluations (log x), one line per sampler and N, the real-data
    floor dotted. Right: sampling wall time per 1,000 images against model evaluations."""
    rows, run, m = results["rows"], results["run"], results["machine"]
    ns = sorted({r["n"] for r in rows}, reverse=True)
    fig, (ax_fid, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, n in enumerate(ns):
        style = ("-", "--", "-.", ":")[i % 4]
        suffix = f", N = {n:,}" if len(ns) > 1 else ""
        group = [r for r in rows if r["n"] == n]
        for sampler in SAMPLERS:
            pts = sorted((r for r in group if r["sampler"] == sampler), key=lambda r: r["evaluations"])
            if not pts:
                continue
            x = [r["evaluations"] for r in pts]
            kw = dict(color=COLORS[sampler], linestyle=style, marker="o" if i == 0 else "s", label=sampler + suffix)
            ax_fid.plot(x, [r["fid"] for r in pts], **kw)
            ax_time.plot(x, [1000 * r["sample_seconds"] / r["n"] for r in pts], **kw)
        ax_fid.axhline(
            group[0]["floor_fid"], color="grey", linestyle=style, linewidth=1, label=f"real data{suffix or ''}"
        )
    ax_fid.set_xscale("log")
    if all(r["fid"] > 0 for r in rows) and all(r["floor_fid"] > 0 for r in rows):
        ax_fid.set_yscale("log")
    ax_fid.set(xlabel="model evaluations per image", ylabel="FID (lower is better)", title="sample quality")
    ax_time.set(
        xscale="log",
        yscale="log",
        xlabel="model evaluations per image",
        ylabel="sampling wall time per 1,000 images (s)",
        title=f"sampling cost ({m['device']})",
    )
    counts = sorted({r["evaluations"] for r in rows})
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    for ax in (ax_fid, ax_time):
        ax.set_xticks(counts)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if ax.get_yscale() == "log":
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    ax_fid.legend(fontsize=8)
    where = m["gpu"] or m["cpu"]
    guided = guidance_label(results)
    fig.suptitle(f"{run['name']} (T = {run['timesteps']}{', ' + guided if guided else ''}): samplers on {where}")
    save_figure(fig, path)


# --------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", help="run folder, name or number (default: the latest)")
    p.add_argument("--artifacts-dir", type=Path, default=DEFAULT_ARTIFACTS_DIR, help="folder holding runs/")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding MNIST/raw")
    p.add_argument("--n", type=int, default=10_000, help="samples per row (FID depends on N)")
    p.add_argument(
        "--n-1000", type=int, help="samples for the rows at 1000 evaluations or more and for DDPM (default: --n)"
    )
    p.add_argument(
        "--compare-at-n-1000",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when --n-1000 < --n, also run the shorter DDIM/DPM-Solver++ rows at --n-1000,\n"
        "so that they compare with DDPM at the same N",
    )
    p.add_argument(
        "--evaluations",
        default=",".join(map(str, EVALUATIONS)),
        help="model evaluations for DDIM and DPM-Solver++ (DDPM: always the run's T)",
    )
    p.add_argument(
        "--ddpm-first",
        action="store_true",
        help="measure the DDPM row first (the reference of every ratio), not cheapest first",
    )
    p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"comma-separated, from {', '.join(SAMPLERS)}")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every row")
    for flag, kind in (("--autoguidance", "auto"), ("--label-guidance", "labels"), ("--cluster-guidance", "clusters")):
        default = Guidance.DEFAULTS[kind]
        p.add_argument(flag, type=float, help=f"as `sample` {flag} (default {default:g} where the run has it; 1: none)")
    p.add_argument(
        "--spacing",
        type=float,
        help=f"timestep spacing power of DDIM / DPM-Solver++ (default {SamplingConfig.DEFAULT_SPACING:g})",
    )
    p.add_argument("--batch-size", type=int, help="samples per forward pass (CPU 256, CUDA 10000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if there is one")
    p.add_argument("--out", type=Path, default=RESULTS, help="path stem of the .json, .md and .png to write")
    p.add_argument("--readme", type=Path, help="also put the table into this file's bench:samplers block")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: on a terminal)")
    args = p.parse_args(argv)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if not samplers or any(s not in SAMPLERS for s in samplers):
        p.error(f"--samplers takes names from {', '.join(SAMPLERS)} (got {args.samplers!r})")
    try:
        evaluations = sorted({int(s) for s in args.evaluations.split(",") if s.strip()})
    except ValueError:
        evaluations = []
    if not evaluations or evaluations[0] < 1:
        p.error(f"--evaluations takes comma-separated positive integers (got {args.evaluations!r})")
    args.samplers, args.evaluations = list(dict.fromkeys(samplers)), evaluations
    args.n_1000 = args.n if args.n_1000 is None else args.n_1000
    if min(args.n, args.n_1000) < MIN_SAMPLES:
        p.error(f"--n and --n-1000 must be at least {MIN_SAMPLES}")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = setup_device(args.device)
    args.batch_size = args.batch_size or SAMPLE_BATCH[device.type]
    run = load_run(resolve_run(args.run, args.artifacts_dir), device)
    guidance = Guidance(auto=args.autoguidance, labels=args.label_guidance, clusters=args.cluster_guidance)
    requested = SamplingConfig(seed=args.seed, spacing=args.spacing, batch_size=args.batch_size, guidance=guidance)
    args.sampling = resolve_for(run, requested)  # the run's defaults where not given, as `mnistdiff sample`
    real = RealData.from_dir(args.data_dir)  # fail before any sampling if MNIST is missing
    num_timesteps = run.schedule.num_timesteps
    plan = plan_rows(
        args.samplers, args.evaluations, num_timesteps, args.n, args.n_1000, args.compare_at_n_1000, args.ddpm_first
    )
    skipped = [e for e in args.evaluations if e > num_timesteps]
    if skipped:
        say(f"skipping {', '.join(map(str, skipped))} evaluations: more than the run's T = {num_timesteps}")
    if not plan:
        raise UserError("nothing to measure: every --evaluations count is above the run's T")
    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["bench_samplers.py", *argv]),
        "machine": machine_info(device),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v.to_dict() if isinstance(v, SamplingConfig) else v)
            for k, v in vars(args).items()
        },
        "run": run_info(run),
        "plan": [asdict(r) for r in plan],
        "rows": [],
        "recommendation": [],
    }
    paths = output_paths(args.out)
    paths[".json"].parent.mkdir(parents=True, exist_ok=True)

    def save() -> str:  # after every row, so a run cut short keeps what it measured
        compare_with_ddpm(results["rows"])
        results["recommendation"] = recommend(results["rows"])
        table = markdown(results)
        atomic_write_json(paths[".json"], results)
        atomic_write_bytes(paths[".md"], table.encode())
        plot(results, paths[".png"])
        return table

    cost = sum(r.evaluations * r.n for r in plan)
    say(f"{run.path.name} on {device}: {len(plan)} rows, {cost:,} image-evaluations, batch {args.batch_size}")
    generate(run, min(args.batch_size, args.n), dataclasses.replace(args.sampling, sampler="ddim", steps=2))  # warm-up
    try:
        for i, row in enumerate(plan, 1):
            say(f"row {i}/{len(plan)}: {row.sampler} at {row.evaluations} evaluations, N = {row.n:,}")
            r = measure(run, row, args, real, device)
            results["rows"].append(r)
            table = save()
            say(
                f"  FID {r['fid']:.3f} (real data {r['floor_fid']:.3f}), {r['sample_seconds']:.1f} s sampling "
                f"({rate(r['images_per_sec'])} images/s), {r['metric_seconds']:.1f} s scoring"
            )
    except KeyboardInterrupt:
        say(f"interrupted: {len(results['rows'])} of {len(plan)} rows kept in {paths['.json']}")
        raise SystemExit(130) from None
    print(table)
    for r in table_order(results["rows"]):
        if r["meets_target"] is not None:
            say(
                f"target {'✓' if r['meets_target'] else '✗'} {r['sampler']} at {r['evaluations']} evaluations "
                f"(N = {r['n']:,}): FID {r['fid_vs_ddpm']:.2f} x DDPM's, target ≤ {r['target']:.2f}"
            )
    for rec in results["recommendation"]:
        say(recommendation_line(rec))
    if args.readme:
        update_readme(args.readme, "samplers", table)
    say(f"wrote {paths['.json']}, .md and .png")
    return results


if __name__ == "__main__":
    run_script(main)
