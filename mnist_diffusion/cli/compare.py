"""`mnistdiff compare A B [C ...]`: runs side by side, and which differences are real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..config import DEFAULT_ARTIFACTS_DIR
from .app import app, console, say, user_errors
from .options import ArtifactsDir


@app.command()
@user_errors
def compare(
    runs: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="RUN",
            help="Two or more runs, by folder, name or number (as --run takes them); each is measured against "
            "the first. RUN@K: the run's K-th evaluation (evals.jsonl) instead of its last (eval.json).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the comparison as one JSON document instead of tables.")
    ] = False,
    html: Annotated[
        Optional[Path],
        typer.Option(
            "--html",
            metavar="PATH",
            help="Also write the comparison to PATH (such as compare.html) as one self-contained page, with the "
            "loss curves overlaid and the sample grids side by side.",
        ),
    ] = None,
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
):
    """Compare runs: the config fields that differ, each metric with its 95% interval, and each
    difference against the first run with a verdict.

    Runs that differ only in --seed (and were evaluated alike) are replicates: they are pooled
    into one group, and the spread between seeds is added to the interval.
    Example: mnistdiff compare 3 4 --html compare.html"""
    from ..io import check_output
    from ..report.compare import compare_runs

    check_output(html, (".html", ".htm"), "--html")
    result = compare_runs(list(runs or []), artifacts_dir)
    if html is not None:
        from ..report.compare_html import write_compare_page

        write_compare_page(result, html)
        say(f"wrote {html}")
    if json_output:
        console.print_json(json.dumps(result))
        return
    for table in compare_tables(result):
        console.print(table)
    for line in verdict_lines(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def estimate_text(e: dict[str, Any] | None) -> str:
    """ "0.3031 +- 0.0078" (half the interval's width: --json and --html give both ends),
    "0.3031 (no interval)" or "-"."""
    if e is None:
        return "-"
    if e.get("low") is None:
        return f"{e['value']:.4g} (no interval)"
    return f"{e['value']:.4g} +- {(e['high'] - e['low']) / 2:.2g}"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def compare_tables(result: dict[str, Any]) -> list[Table]:
    """The runs, the config fields that differ, and the metrics side by side, as rich tables."""
    from ..report.compare import METRICS

    records = result["runs"]
    runs = Table(title="runs", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("run", "group", "parent", "training", "machine", "eval"):
        runs.add_column(col)
    for r in records:
        parent = r["parent"]
        evaluated = "no eval" if not r["evaluated"] else f"N = {r['n']:,}" if isinstance(r["n"], int) else "?"
        if r["evaluated"]:
            evaluated += f", {r['interval_method']}" if r["interval_method"] else ", no intervals"
        runs.add_row(
            escape(r["name"]),
            r["group"],
            escape(f"{parent.get('run', '?')} at step {parent.get('step', '?')}") if parent else "-",
            f"{seconds_text(r['train_seconds'])}, {r['steps'] if r['steps'] is not None else '?'} steps",
            escape(r["machine"] or "not recorded"),
            evaluated,
        )
    tables = [runs]
    names = [escape(r["name"]) for r in records]
    differ = {**result["config"], **result["eval_settings"]}
    config = Table(title="config fields that differ", box=box.SIMPLE_HEAD, pad_edge=False)
    config.add_column("field")
    for name in names:
        config.add_column(name)
    for field, values in differ.items():
        config.add_row(escape(field), *(escape(json.dumps(v)) for v in values))
    if not differ:
        config.caption = "the configs and evaluation settings are the same"
    tables.append(config)
    level = f"{100 * result['level']:.0f}%"
    metrics = Table(title=f"metrics: value +- half its {level} interval", box=box.SIMPLE_HEAD, pad_edge=False)
    metrics.add_column("metric")
    metrics.add_column("better")
    for name in names:
        metrics.add_column(name, justify="right")
    pooled_groups = [g for g in result["groups"] if len(g["runs"]) > 1]
    for g in pooled_groups:
        metrics.add_column(f"{g['name']}: mean of {len(g['runs'])}", justify="right")
    for key, label, higher in METRICS:
        cells = [estimate_text(r["metrics"].get(key)) for r in records]
        cells += [estimate_text(g["metrics"].get(key)) for g in pooled_groups]
        if any(c != "-" for c in cells):
            metrics.add_row(label, "higher" if higher else "lower", *cells)
    tables.append(metrics)
    return tables


def verdict_lines(result: dict[str, Any]) -> list[str]:
    """The pooled groups, then one line per metric of each difference against the first."""
    lines = []
    for g in result["groups"]:
        if len(g["runs"]) > 1:
            lines.append(
                f"group {g['name']}: replicates (the same config but for the seed), pooled: {', '.join(g['runs'])}"
            )
    if result["compared"] == "runs" and len(result["runs"]) > 1:
        lines.append("all runs are replicates of one recipe: each run against the first shows what the seed does")
    for d in result["differences"]:
        lines.append(f"{d['label']} against {d['against_label']}:")
        lines += [f"  {row['text']}" for row in d["metrics"]]
    for name, problems in result["problems"].items():
        lines += [f"{name}: {p}" for p in problems]
    return lines
