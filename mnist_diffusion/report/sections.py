"""The sections of a run's report, each a function of the run's files (:class:`RunFiles`) that
returns HTML, saying plainly what it cannot show and why."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..config import PRESETS, RunConfig, SamplingConfig
from ..data.clusters import load_clusters
from ..errors import UserError
from ..io import JSON_MAX_BYTES, read_bounded
from ..pictures.figures import figure_png, trajectory_plot
from ..runs.loader import load_run
from ..runs.store import EVALS, GUIDE, MANIFEST, PROGRESS, REPORT, verify_manifest
from ..runtime import pick_device
from ..sampling.outputs import trajectory
from .charts import histogram_chart, number, points, training_curves
from .compare import estimates
from .environment import environment
from .html import Safe, esc, href, image, pairs, table, tag
from .reader import SAMPLES, RunFiles

STRIP_MAX = 12  # progress grids shown at most, evenly spaced over the run (the last always)


def note(text: object) -> Safe:
    return tag("p", text, class_="muted")


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def value_text(value: Any) -> str:
    """A config or settings value as config.json writes it (true, [1, 2, 6], "cosine")."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def overview(run: RunFiles) -> list[Safe]:
    s = run.summary
    planned = run.meta("stop_step")
    fid = f"{s.fid:.3f} at N = {s.fid_n:,}" if s.fid is not None and s.fid_n else "not evaluated yet (mnistdiff eval)"
    rows = [
        ("status", s.status),
        ("preset", s.preset or "?"),
        ("steps", "?" if s.step is None else f"{s.step:,}" + (f" of {int(planned):,}" if planned else "")),
        ("epochs planned", "?" if s.epochs is None else s.epochs),
        ("last logged loss", "-" if s.final_loss is None else f"{s.final_loss:.4f}"),
        ("training time", seconds_text(run.meta("train_seconds"))),
        ("FID", fid),
    ]
    out = [pairs(rows)]
    if run.problems:
        listed = tag("ul", [tag("li", p) for p in run.problems])
        out.append(tag("div", [tag("strong", "Missing or unreadable:"), listed], class_="problems"))
    return out


def made(run: RunFiles) -> list[Safe]:
    info = run.info
    if info is None:
        return [note("run.json is missing or unreadable: the command that made this run is not known.")]
    out = [tag("pre", tag("code", info.get("command", "?")))]
    rows = [("created", info.get("created", "?"))]
    parent = info.get("parent")
    if isinstance(parent, dict) and isinstance(parent.get("run"), str):
        link = tag("a", parent["run"], href=f"../{href(parent['run'], REPORT)}")
        rows.append(("parent", Safe(link + esc(f" from its step {parent.get('step', '?')}"))))
    else:
        rows.append(("parent", "none: trained from scratch"))
    rows += [
        ("mnistdiff, torch", f"{info.get('mnist_diffusion_version', '?')}, {info.get('torch_version', '?')}"),
        ("processes", "?" if run.meta("world_size") is None else int(run.meta("world_size"))),
    ]
    return [*out, pairs(rows)]


def config(run: RunFiles) -> list[Safe]:
    cfg = run.cfg
    if cfg is None:
        return [note("The config cannot be shown: config.json is missing or unreadable.")]
    preset = PRESETS.get(cfg.preset)
    theirs = _flat(preset) if preset else {}
    rows = []
    for section, fields in _flat(cfg).items():
        for name, value in fields.items():
            differs = preset is not None and theirs[section][name] != value
            cells = [f"{section}.{name}", value_text(value), value_text(theirs[section][name]) if differs else ""]
            rows.append((cells, {"class_": "diff"}) if differs else cells)
    changed = sum(isinstance(r, tuple) for r in rows)
    head = (
        f"Every field of config.json; the {changed} highlighted differ from the {cfg.preset!r} preset."
        if preset
        else f"Every field of config.json. {cfg.preset!r} is not a shipped preset: nothing to compare."
    )
    return [note(head), table(["field", "value", "preset's value"], rows)]


def _flat(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    return {
        s: {f.name: getattr(getattr(cfg, s), f.name) for f in dataclasses.fields(getattr(cfg, s))}
        for s in ("model", "diffusion", "train")
    }


def machine() -> list[Safe]:
    return [
        note("Where this report was written: for the report `train` writes, the machine that trained the run."),
        pairs(environment()),
    ]


def training(run: RunFiles) -> list[Safe]:
    out = []
    rates = points(run.records, "images_per_sec")[1]
    if rates:
        median = sorted(rates)[len(rates) // 2]
        out.append(note(f"{len(points(run.records, 'loss')[0])} logged points; median {median:,.1f} images/s."))
    chart = training_curves(run.records)
    out.append(
        image(chart, "loss, learning rate, images/s and FID against the step", class_="chart")
        if chart
        else note("No training figures logged yet (metrics.jsonl).")
    )
    fids = [r for r in run.records if number(r.get("fid")) is not None]
    if fids:
        out.append(tag("h3", "FID while training (train --eval-every)"))
        out.append(note("Fixed-seed samples without autoguidance: compare these with one another, not with eval's."))
        rows = [
            [
                r.get("step"),
                f"{r['fid']:.3f}",
                r.get("fid_n", "?"),
                seconds_text(number(r.get("fid_seconds"))),
                "-" if number(r.get("fid_images_per_sec")) is None else f"{r['fid_images_per_sec']:,.0f}",
            ]
            for r in fids
        ]
        out.append(table(["step", "FID", "N", "cost", "images/s"], rows))
    return out


def samples(run: RunFiles, device: str = "cpu") -> list[Safe]:
    """The end-of-run grid, the grids taken while training, and a trajectory drawn now on ``device``."""
    out = []
    grid = run.png(run.dir / SAMPLES, optional=True)  # --grid 0 makes none; the manifest says if one is lost
    out.append(
        tag(
            "figure",
            [
                image(grid, "samples drawn at the end of training"),
                tag(
                    "figcaption",
                    "samples.png: drawn at the end of training (default sampler and guidance, the run's seed)",
                ),
            ],
        )
        if grid
        else note("No end-of-run grid (samples.png): training not finished, or --grid 0.")
    )
    out += _strip(run)
    out.append(tag("h3", "Denoising trajectory"))
    out += _trajectory(run, device)
    return out


def _strip(run: RunFiles) -> list[Safe]:
    grids = run.progress_grids()
    if not grids:
        return [note("No samples taken during training (train --sample-every).")]
    if len(grids) > STRIP_MAX:
        grids = [grids[round(i * (len(grids) - 1) / (STRIP_MAX - 1))] for i in range(STRIP_MAX)]
    shown = [(step, run.png(path)) for step, path in grids]
    figures = [
        tag("figure", [image(data, f"samples at step {step}", scale=1.5), tag("figcaption", f"step {step:,}")])
        for step, data in shown
        if data
    ]
    count = len(run.progress_grids())
    head = f"{PROGRESS}/: the same seed at {count} steps" + (f", {len(figures)} shown" if count > len(figures) else "")
    return [tag("h3", "Samples while training"), note(head), tag("div", figures, class_="strip")]


def _trajectory(run: RunFiles, device: str) -> list[Safe]:
    """Drawn now from the final weights: 4 samples, seed 0, the default sampler and guidance, on ``device``."""
    if run.cfg is None:
        return [note("No trajectory: the config is unreadable.")]
    try:
        loaded = load_run(run.dir, pick_device(device))
        settings = SamplingConfig(seed=0, precision=run.cfg.train.precision)
        frames, labels = trajectory(loaded, settings)
    except UserError as e:
        return [note(f"No trajectory: {str(e).replace(str(run.dir), run.dir.name)}")]
    caption = "Drawn when this report was written: 4 samples of the final weights, seed 0, default sampler, guidance."
    return [
        tag(
            "figure",
            [
                image(figure_png(trajectory_plot(frames, labels), dpi=100), "denoising trajectory", class_="chart"),
                tag("figcaption", caption),
            ],
        )
    ]


METRICS = [  # (key in eval.json's model and real, label)
    ("fid", "FID (lower is better)"),
    ("kid_mean", "KID x 1000 (lower is better)"),
    ("precision", "precision (fidelity)"),
    ("recall", "recall (diversity)"),
    ("density", "density"),
    ("coverage", "coverage"),
    ("inception_score", "inception score (max 10)"),
    ("mean_confidence", "mean classifier confidence"),
    ("confident_share", "share with confidence > 0.9"),
    ("label_accuracy", "label accuracy"),
]


def _metric(values: Any, key: str) -> str:
    if not isinstance(values, dict) or number(values.get(key)) is None:
        return "-"
    if key == "kid_mean":
        std = number(values.get("kid_std"))
        return f"{1000 * values[key]:.3f}" + ("" if std is None else f" +- {1000 * std:.3f}")
    return f"{values[key]:.4f}"


def evaluation(run: RunFiles) -> list[Safe]:
    result = run.eval
    if result is None:
        return [note("Not evaluated yet: `mnistdiff eval --run NAME` scores its samples and writes eval.json.")]
    model, real = result.get("model"), result.get("real")
    n, n_floor = result.get("n", "?"), result.get("n_floor", "?")
    out = [
        note(
            f"eval.json of {result.get('date', '?')}: N = {n} samples against {result.get('n_reference', '?')} "
            f"MNIST test images; the floor: the same metric for N = {n_floor} real training images."
        )
    ]
    out.append(
        table(
            ["metric", "samples", "real data (the floor)"],
            [
                [label, _metric(model, key), _metric(real, key)]
                for key, label in METRICS
                if key != "label_accuracy" or _metric(model, key) != "-"
            ],
        )
    )
    hist = _histogram(model)
    if hist:
        out.append(image(histogram_chart(hist, _histogram(real)), "class histogram", class_="chart"))
    settings = result.get("sampling") if isinstance(result.get("sampling"), dict) else {}
    rows = [(k, value_text(v)) for k, v in settings.items()]
    net = result.get("feature_net") if isinstance(result.get("feature_net"), dict) else {}
    rows += [
        ("device", result.get("device", "?")),
        ("seconds", value_text(result.get("seconds"))),
        ("feature net", value_text(net)),
        ("NLL", value_text(result.get("nll"))),
        ("mnistdiff, torch", f"{result.get('mnist_diffusion_version', '?')}, {result.get('torch_version', '?')}"),
    ]
    return [*out, tag("h3", "Settings"), pairs(rows), *_every_evaluation(run)]


def _every_evaluation(run: RunFiles) -> list[Safe]:
    """A row for each evaluation that ``evals.jsonl`` keeps, when there is more than the one above:
    a sweep of sampling flags on one run, each scored with its own settings."""
    evals = run.evals()
    if len(evals) < 2:
        return []
    rows = []
    for k, ev in enumerate(evals, 1):
        s = ev.get("sampling") if isinstance(ev.get("sampling"), dict) else {}
        words = ", ".join(str(s[key]) for key in ("sampler", "steps", "guidance_text") if s.get(key) is not None)
        found = estimates(ev)
        fid = found.get("fid")
        cells = [f"{run.dir.name}@{k}", str(ev.get("date", "?"))[:16], str(ev.get("n", "?")), words or "?"]
        cells.append("-" if fid is None else f"{fid['value']:.4f}" + _interval(fid))
        cells += ["-" if key not in found else f"{found[key]['value']:.3f}" for key in ("precision", "recall")]
        cells.append("-" if "confident_share" not in found else f"{found['confident_share']['value']:.1%}")
        rows.append(cells)
    return [
        tag("h3", f"Every evaluation ({len(evals)})"),
        note(f"{EVALS}, oldest first; `mnistdiff compare NAME@K NAME@J` compares two of them."),
        table(["as", "date", "N", "sampler, steps, guidance", "FID [95%]", "precision", "recall", "confident"], rows),
    ]


def _interval(e: dict[str, Any]) -> str:
    return "" if e.get("low") is None else f" [{e['low']:.3f}, {e['high']:.3f}]"


def _histogram(values: Any) -> list[int] | None:
    hist = values.get("class_histogram") if isinstance(values, dict) else None
    ok = isinstance(hist, list) and len(hist) == 10 and all(isinstance(v, int) and v >= 0 for v in hist)
    return hist if ok else None


def guide_and_clusters(run: RunFiles) -> list[Safe]:
    cfg = run.cfg
    if cfg is None:
        return [note("Unknown: the config is unreadable.")]
    t, out = cfg.train, []
    guided = t.guide_at > 0 and (t.clusters or not cfg.model.num_classes)
    total = run.total_steps
    at = f"step {max(1, round(t.guide_at * total)):,} of {total:,}" if total else f"{t.guide_at:.0%} of training"
    if not guided:
        why = "a --conditional run guides with its labels" if cfg.model.num_classes else "guide_at is 0"
        out.append(pairs([("guide", f"none: {why}")]))
    else:
        there = (run.dir / GUIDE).is_file()
        out.append(
            pairs(
                [
                    (
                        "guide",
                        f"{GUIDE}: the EMA weights at {at}, the weak model of autoguidance"
                        if there
                        else f"not yet: written at {at}",
                    )
                ]
            )
        )
    if t.clusters:
        try:
            counts = load_clusters(run.dir, t.clusters)[1].tolist()
        except UserError as e:
            run.note(str(e))
            return [*out, note(f"Clusters: {run.problems[-1]}")]
        ordered = sorted(counts)
        out.append(
            pairs(
                [
                    ("pixel clusters", f"{t.clusters} k-means clusters of the pixels, learned as labels"),
                    ("sizes", f"{ordered[0]:,} to {ordered[-1]:,} images, median {ordered[len(counts) // 2]:,}"),
                    ("each cluster's size", " ".join(str(c) for c in counts)),
                ]
            )
        )
    return out


LOST = {"missing": "listed in the manifest, but missing", "changed": "changed since the manifest was written"}


def files(run: RunFiles) -> list[Safe]:
    try:
        status = verify_manifest(run.dir)
        listed = json.loads(read_bounded(run.dir / MANIFEST, JSON_MAX_BYTES, "a JSON file"))
    except (UserError, OSError, ValueError) as e:
        run.note(str(e))
        return [note(f"No file can be verified: {run.problems[-1]}")]
    entries = listed.get("files", {})
    rows = []
    for name, state in sorted(status.items()):
        if state in LOST:
            run.note(f"{name}: {LOST[state]}")
        entry = entries.get(name) if isinstance(entries.get(name), dict) else {}
        size = entry.get("bytes") if state != "unlisted" else (run.dir / name).lstat().st_size
        cell = tag("span", state, class_="good" if state == "ok" else "bad")
        rows.append([name, cell, f"{size:,}" if isinstance(size, int) else "?", str(entry.get("sha256", ""))[:16]])
    folders = sorted(p.name + "/" for p in run.dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    out = [
        note(
            f"{MANIFEST} of {listed.get('updated', '?')}, each file checked against it when this report was "
            f"written ({REPORT} itself is not listed)."
        )
    ]
    out.append(table(["file", "status", "bytes", "sha256 (first 16)"], rows))
    if folders:
        out.append(note(f"Not in the manifest, which lists the files at the top of the folder: {', '.join(folders)}"))
    return out
