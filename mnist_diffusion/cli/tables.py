"""Rich tables of the CLI: the runs listing and the eval report."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from ..runs.summary import RunSummary


def runs_table(
    summaries: list[RunSummary],
    title: str,
    replicates: dict[str, str] | None = None,
    fid_halfwidths: dict[str, float] | None = None,
) -> Table:
    """One row per run: name, created, preset, steps, last loss, FID at its N (+- half its 95%
    interval, where ``fid_halfwidths`` has one), status; fits 80 columns. ``replicates`` gives a
    letter to each run that has replicates (the same config but for the seed), shown after its name."""
    replicates, fid_halfwidths = replicates or {}, fid_halfwidths or {}
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("run", "created", "preset", "steps", "loss", "FID @ N", "status"):
        numeric = col in ("steps", "loss", "FID @ N")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=True)
    for s in summaries:
        fid = "-"
        if s.fid is not None and s.fid_n:
            half = fid_halfwidths.get(s.name)
            fid = (f"{s.fid:.3f}+-{half:.3f}" if half is not None else f"{s.fid:.2f}") + f" @ {_short_count(s.fid_n)}"
        table.add_row(
            escape(s.name) + (f" {replicates[s.name]}" if s.name in replicates else ""),
            s.created[5:] or "?",  # MM-DD HH:MM
            escape(s.preset or "?"),
            "?" if s.step is None else str(s.step),
            f"{s.final_loss:.4f}" if s.final_loss is not None and math.isfinite(s.final_loss) else "-",
            fid,
            s.status,
        )
    if replicates:
        table.caption = "A, B after a name: replicates (configs that differ only in the seed)"
    return table


def _short_count(n: int) -> str:
    """10000 -> "10k", 2500 -> "2.5k", 800 -> "800": the N beside a FID in a narrow table."""
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


_ROWS = [  # (key, label, format)
    ("fid", "FID (lower is better)", "{:.3f}"),
    ("kid_mean", "KID x 1000 (lower is better)", "kid"),
    ("precision", "precision (fidelity)", "{:.3f}"),
    ("recall", "recall (diversity)", "{:.3f}"),
    ("density", "density", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("inception_score", "inception score (max 10)", "{:.3f}"),
    ("mean_confidence", "mean classifier confidence", "{:.3f}"),
    ("confident_share", "share with confidence > 0.9", "{:.3f}"),
    ("label_accuracy", "label accuracy", "{:.3f}"),
    ("class_histogram", "class histogram (0-9)", "hist"),
]


def _format(values: dict[str, Any] | None, key: str, fmt: str, interval: dict[str, Any] | None = None) -> str:
    """One cell: the value, "+- half-width" of its interval where it has one (KID: x 1000)."""
    if not values or values.get(key) is None:
        return "-"
    if fmt == "hist":
        return " ".join(str(c) for c in values[key])
    scale, fmt = (1000, "{:.3f}") if fmt == "kid" else (1, fmt)
    text = fmt.format(scale * values[key])
    if interval:
        text += " ± " + fmt.format(scale * (interval["high"] - interval["low"]) / 2)
    elif key == "kid_mean":  # no interval: the spread over KID's subsets, as before
        text += f" +- {1000 * values['kid_std']:.3f} (subset sd)"
    return text


def _intervals(result: dict[str, Any], side: str) -> dict[str, Any]:
    u = result.get("uncertainty") or {}
    return u.get(side) or {}


def interval_caption(result: dict[str, Any]) -> str:
    """What the ± of an eval table means, such as "± 95% interval: bootstrap over the 2,000 samples
    (100 resamples; the test digits fixed)"."""
    u = result.get("uncertainty")
    if not u:
        return "no intervals (--bootstrap 0)"
    level = f"± {100 * u['level']:g}% interval"
    if u["method"] == "repeats":
        return f"{level}: t-interval over {u['repeats']} independent sample sets; values are their means"
    return (
        f"{level}: bootstrap over the {result['n']:,} samples ({u['bootstrap']} resamples; the test digits "
        "fixed; KID: delta-method se)"
    )


def report_table(result: dict[str, Any]) -> Table:
    """A rich table of :func:`evaluate_images` / :func:`evaluate_run` output: one row per metric,
    the model's value and interval beside the two real-data floors, then the CAS if measured."""
    net = result["feature_net"]
    u = result.get("uncertainty") or {}
    sets = f" x {u['repeats']} sets" if u.get("method") == "repeats" else ""
    table = Table(
        title=f"Sample quality, N = {result['n']:,} samples{sets} vs {result['n_reference']:,} MNIST test images "
        f"(feature net test accuracy {100 * net['accuracy']:.2f}%)"
    )
    floors = result.get("floors") or {}
    half = floors.get("test_vs_test")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column(f"real data (N = {result.get('n_floor', 0):,} train)", justify="right")
    if half:
        m = min(result["n"], result["n_reference"] // 2)
        table.add_column(f"real: test half vs half ({m:,} each)", justify="right")
    model_iv, real_iv = _intervals(result, "model"), _intervals(result, "real")
    for key, label, fmt in _ROWS:
        if key == "label_accuracy" and key not in result["model"]:
            continue
        row = [
            label,
            _format(result["model"], key, fmt, model_iv.get(key)),
            _format(result.get("real"), key, fmt, real_iv.get(key)),
        ]
        table.add_row(*row, *([_format(half, key, fmt)] if half else []))
    cas = result.get("cas")
    if cas:
        cells = [f"{c['accuracy']:.3f} ± {(c['high'] - c['low']) / 2:.3f}" for c in (cas["samples"], cas["real"])]
        table.add_row(f"CAS: accuracy on {cas['samples']['n']:,} real test digits", *cells, *(["-"] if half else []))
    nll = result.get("nll")
    if nll:
        note = "" if nll["estimate"] == "exact" else f", {nll['timesteps_evaluated']} of {nll['timesteps']} terms"
        cells = [f"{nll['bpd']:.3f} +- {nll['bpd_stderr']:.3f}", "-", *(["-"] if half else [])]
        table.add_row(f"NLL bits/dim ({nll['n_images']:,} test images{note})", *cells)
    captions = [interval_caption(result)]
    if cas:
        captions.append("CAS: binomial interval over the test digits (not the classifier's seed spread)")
    s = result.get("sampling")
    if s:  # what was measured: FID depends on the sampler as much as on the weights
        captions.append(f"run {escape(str(result.get('run', '?')))}: {sampling_caption(s)}")
    table.caption = "\n".join(captions)
    return table


def sampling_caption(s: dict[str, Any]) -> str:
    """The settings of an ``eval.json`` in words, such as "dpmpp-2m-sde, 20 evaluations, spacing
    0.5, autoguidance 3, seed 0"."""
    parts = [str(s["sampler"]), "all T steps" if s["sampler"] == "ddpm" else f"{s['steps']} evaluations"]
    if s.get("spacing") is not None:
        parts.append(f"spacing {s['spacing']:g}")
    if s.get("eta"):
        parts.append(f"eta {s['eta']:g}")
    if s.get("guidance_text"):
        parts.append(s["guidance_text"])
    if s.get("labels") == "i % 10":
        parts.append("labels i % 10")
    return ", ".join(parts) + f", seed {s['seed']}"


def inversion_table(rows: list[dict[str, float]]) -> Table:
    """One row per step count: the mean squared error and PSNR of the reconstructions."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("steps", "MSE", "PSNR (dB)"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(str(r["steps"]), f"{r['mse']:.2e}", f"{r['psnr']:.2f}")
    return table
