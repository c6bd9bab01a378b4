"""``compare --html``: a comparison of runs (report/compare.py) as one self-contained page, like
the run report: the runs, the config fields that differ, the metrics with their intervals, the
verdicts, the training loss of every run on one chart and their sample grids side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib import ticker

from ..io import atomic_write_bytes
from ..pictures.figures import figure_png, plt
from .charts import points
from .compare import METRICS
from .html import Safe, image, page, table, tag
from .reader import SAMPLES, RunFiles
from .sections import note, seconds_text

# The links of the nav wrap without the last of a line's margin pushing the page wider than a phone.
EXTRA_STYLE = """<style>
nav { display: flex; flex-wrap: wrap; column-gap: 0.8em; }
nav a { margin-right: 0; }
</style>"""
SECTIONS = [("runs", "Runs"), ("config", "Config"), ("metrics", "Metrics"), ("verdicts", "Differences")]
SECTIONS += [("training", "Training loss"), ("samples", "Samples")]


def interval_text(e: dict[str, Any] | None) -> str:
    if e is None:
        return "-"
    if e.get("low") is None:
        return f"{e['value']:.4g} (no interval)"
    return f"{e['value']:.4g} ({e['low']:.4g} to {e['high']:.4g})"


def loss_chart(runs: list[RunFiles]) -> bytes | None:
    """The training loss of every run against the step, on one log-scale chart; None if none logged any."""
    curves = [(run.dir.name, *points(run.records, "loss", positive=True)) for run in runs]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 3.2))
    fig.subplots_adjust(left=0.12, right=0.98, top=0.96, bottom=0.16)
    for name, steps, values in curves:
        ax.plot(steps, values, lw=1.2, marker="o" if len(steps) < 30 else None, ms=3, label=name)
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(ticker.FormatStrFormatter("%.4g"))
    ax.set_xlabel("optimizer step", fontsize=9)
    ax.set_ylabel("training loss (MSE, log)", fontsize=8)
    ax.tick_params(which="both", labelsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return figure_png(fig, dpi=100, tight=False)


def runs_section(result: dict[str, Any]) -> list[Safe]:
    rows = []
    for r in result["runs"]:
        parent = r["parent"]
        evaluated = "no eval" if not r["evaluated"] else f"N = {r['n']:,}" if isinstance(r["n"], int) else "?"
        if r["evaluated"]:
            evaluated += f", {r['interval_method']}" if r["interval_method"] else ", no intervals"
        rows.append(
            [
                r["name"],
                r["group"],
                f"{parent.get('run', '?')} at step {parent.get('step', '?')}" if parent else "none",
                seconds_text(r["train_seconds"]),
                r["machine"] or "not recorded",
                evaluated,
            ]
        )
    pooled = [g for g in result["groups"] if len(g["runs"]) > 1]
    notes = [
        note(f"Group {g['name']}: replicates (the same config but for the seed), pooled: {', '.join(g['runs'])}.")
        for g in pooled
    ]
    return [table(["run", "group", "parent", "training time", "machine", "eval"], rows), *notes]


def config_section(result: dict[str, Any]) -> list[Safe]:
    differ = {**result["config"], **result["eval_settings"]}
    if not differ:
        return [note("The configs and the evaluation settings are the same.")]
    rows = [[field, *(json.dumps(v) for v in values)] for field, values in differ.items()]
    head = "Only the fields that differ; eval.* are the settings eval.json was measured with."
    return [note(head), table(["field", *(r["name"] for r in result["runs"])], rows)]


def metrics_section(result: dict[str, Any]) -> list[Safe]:
    pooled = [g for g in result["groups"] if len(g["runs"]) > 1]
    head = ["metric", *(r["name"] for r in result["runs"]), *(f"group {g['name']} (mean)" for g in pooled)]
    rows = []
    for key, label, higher in METRICS:
        cells = [interval_text(r["metrics"].get(key)) for r in result["runs"]]
        cells += [interval_text(g["metrics"].get(key)) for g in pooled]
        if any(c != "-" for c in cells):
            rows.append([f"{label} ({'higher' if higher else 'lower'} is better)", *cells])
    level = f"{100 * result['level']:.0f}%"
    return [note(f"Each value with its {level} interval, as eval.json records it."), table(head, rows)]


def verdicts_section(result: dict[str, Any]) -> list[Safe]:
    out = []
    if result["compared"] == "runs":
        out.append(note("All the runs are replicates of one recipe: each is set against the first."))
    for d in result["differences"]:
        items = [
            tag("li", row["text"], class_={"better": "good", "worse": "bad"}.get(row["verdict"]))
            for row in d["metrics"]
        ]
        out += [tag("h3", f"{d['label']} against {d['against_label']}"), tag("ul", items)]
    return out


def training_section(runs: list[RunFiles]) -> list[Safe]:
    chart = loss_chart(runs)
    if chart is None:
        return [note("No run logged a training loss (metrics.jsonl).")]
    return [image(chart, "the training loss of each run against the step", class_="chart")]


def samples_section(runs: list[RunFiles]) -> list[Safe]:
    figures = []
    for run in runs:
        grid = run.png(run.dir / SAMPLES, optional=True)
        shown = image(grid, f"samples of {run.dir.name}") if grid else note("no samples.png")
        figures.append(tag("figure", [shown, tag("figcaption", run.dir.name)]))
    return [note("samples.png of each run, drawn at the end of its training."), tag("div", figures, class_="strip")]


def compare_page(result: dict[str, Any]) -> str:
    """The comparison :func:`compare_runs` returned, as HTML text."""
    runs = [RunFiles(Path(path)) for path in dict.fromkeys(r["path"] for r in result["runs"])]  # each folder once
    parts = {
        "runs": runs_section(result),
        "config": config_section(result),
        "metrics": metrics_section(result),
        "verdicts": verdicts_section(result),
        "training": training_section(runs),
        "samples": samples_section(runs),
    }
    names = ", ".join(r["name"] for r in result["runs"])
    body = [
        Safe(EXTRA_STYLE),
        tag("h1", "mnistdiff compare"),
        tag("p", names, class_="muted"),
        tag("nav", [tag("a", heading, href=f"#{anchor}") for anchor, heading in SECTIONS]),
    ]
    problems = [f"{name}: {p}" for name, found in result["problems"].items() for p in found]
    if problems:
        listed = tag("ul", [tag("li", p) for p in problems])
        body.append(tag("div", [tag("strong", "Missing or unreadable:"), listed], class_="problems"))
    for anchor, heading in SECTIONS:
        body.append(tag("section", [tag("h2", heading), *parts[anchor]], id=anchor))
    return page(f"compare {names}", body)


def write_compare_page(result: dict[str, Any], path: str | Path) -> Path:
    """Write the comparison page to ``path`` (atomically); returns the path."""
    path = Path(path)
    atomic_write_bytes(path, compare_page(result).encode("utf-8"))
    return path
