"""``artifacts/index.html`` (`mnistdiff runs --html`): one row per run folder, unreadable ones too,
with a thumbnail of its samples and a link to its report; a click on a column's heading sorts
the rows by it (a few lines of inline script, the page's only code)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..io import JSON_MAX_BYTES, PNG_MAX_BYTES, NotReadable, atomic_write_bytes, read_bounded
from ..runs.store import CHECKPOINT_META, REPORT
from ..runs.summary import RunSummary, summarize_runs
from .charts import number
from .compare import fid_estimate, replicate_marks
from .html import Safe, href, image, page, png_size, tag
from .reader import SAMPLES

INDEX = "index.html"
THUMBNAIL = 96  # pixels on the thumbnail's longer side

SORT_SCRIPT = """
document.querySelectorAll("th[data-col]").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], col = Number(th.dataset.col);
    var up = th.getAttribute("aria-sort") !== "ascending";
    function key(row) {
      var v = row.cells[col].dataset.sort;
      return v === "" ? null : isNaN(Number(v)) ? v : Number(v);
    }
    var rows = Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);  /* blanks last */
      return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
    });
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

EXTRA_STYLE = """<style>
th[data-col] { cursor: pointer; user-select: none; }
th[data-col]::after { content: " \\2195"; color: #9aa1ad; }
th[aria-sort="ascending"]::after { content: " \\2191"; color: inherit; }
th[aria-sort="descending"]::after { content: " \\2193"; color: inherit; }
td.problem { max-width: 40ch; font-size: 0.85em; }
</style>"""

COLUMNS = ["run", "samples", "preset", "steps", "training time", "FID @ N", "status", "created", "replicates"]


def thumbnail(path: Path) -> bytes | None:
    """A small PNG of a run's samples.png, or None if it is missing or unreadable (or not a regular
    file, or over ``PNG_MAX_BYTES``)."""
    try:
        data = read_bounded(path, PNG_MAX_BYTES, "a PNG image")
    except (OSError, NotReadable):
        return None
    if png_size(data) is None:
        return None
    with Image.open(io.BytesIO(data)) as img:
        small = img.convert("L")
        small.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, format="PNG")
    return buf.getvalue()


def train_seconds(run_dir: Path) -> float | None:
    """The training time checkpoint.json records, or None."""
    try:
        meta = json.loads(read_bounded(run_dir / CHECKPOINT_META, JSON_MAX_BYTES, "a JSON file"))
    except (OSError, ValueError, RecursionError, NotReadable):
        return None
    return number(meta.get("train_seconds")) if isinstance(meta, dict) else None


def cell(content: object, sort: object, *, numeric: bool = False, class_: str | None = None) -> Safe:
    """A table cell and the value it sorts by ("" sorts last)."""
    classes = " ".join(c for c in ("num" if numeric else None, class_) if c) or None
    return tag("td", content, data_sort="" if sort is None else sort, class_=classes)


def row(s: RunSummary, replicate: str | None = None, fid_interval: dict | None = None) -> Safe:
    """A run's row; ``replicate``: the letter of its group of replicates (the same config but for
    the seed), if it has any; ``fid_interval``: its FID's 95% interval (report/compare.py), if eval recorded one."""
    report = s.path / REPORT
    name = tag("a", s.name, href=href("runs", s.name, REPORT)) if report.is_file() else s.name
    hint = tag("div", f"no report yet: mnistdiff report --run {s.name}", class_="muted") if not report.is_file() else ""
    thumb = thumbnail(s.path / SAMPLES)
    seconds = train_seconds(s.path)
    fid = "-"
    if s.fid is not None and s.fid_n:
        spread = "" if fid_interval is None else f" +- {(fid_interval['high'] - fid_interval['low']) / 2:.3f}"
        fid = f"{s.fid:.3f}{spread} @ {s.fid_n:,}"
    status = [s.status, tag("div", s.problem, class_="muted")] if s.problem else s.status
    cells = [
        cell([name, hint], s.name),
        cell(image(thumb, f"samples of {s.name}") if thumb else "-", 1 if thumb else 0),
        cell(s.preset or "?", s.preset),
        cell("?" if s.step is None else f"{s.step:,}", s.step, numeric=True),
        cell("-" if seconds is None else f"{seconds:,.1f} s", seconds, numeric=True),
        cell(fid, s.fid, numeric=True),
        cell(status, s.status, class_="problem" if s.problem else None),
        cell(s.created, s.created),
        cell(replicate or "-", replicate),
    ]
    return tag("tr", cells, data_run=s.name)


def index_page(artifacts_dir: str | os.PathLike) -> str:
    """The index of the runs in ``artifacts_dir`` as HTML text."""
    summaries = summarize_runs(artifacts_dir)
    head = tag("tr", [tag("th", name, data_col=i, title="sort by this column") for i, name in enumerate(COLUMNS)])
    marks = replicate_marks([s.path for s in summaries])
    fids = {s.name: fid_estimate(s.path) for s in summaries}
    intervals = {name: e for name, e in fids.items() if e is not None and e["low"] is not None}
    rows = [row(s, marks.get(s.name), intervals.get(s.name)) for s in summaries]
    grid = tag("div", tag("table", [tag("thead", head), tag("tbody", rows)], id="runs"), class_="scroll")
    unreadable = sum(s.problem is not None for s in summaries)
    body = [
        tag("h1", "mnistdiff runs"),
        tag(
            "p",
            f"{len(summaries)} runs in {Path(artifacts_dir).name}/runs"
            + (f", {unreadable} of them unreadable (the reason is under their status)" if unreadable else "")
            + ". Click a column's heading to sort by it; FID depends on N, so compare at equal N. "
            "FID +- half its 95% interval, where eval recorded one; replicates: runs whose configs differ only in "
            "the seed share a letter (mnistdiff compare pools them).",
            class_="muted",
        ),
        grid if summaries else tag("p", "No runs yet: start one with `mnistdiff train`."),
    ]
    return page("mnistdiff runs", [Safe(EXTRA_STYLE), *body], script=SORT_SCRIPT)


def write_index(artifacts_dir: str | os.PathLike) -> Path:
    """Write ``index.html`` into the artifacts folder (atomically); returns its path."""
    path = Path(artifacts_dir) / INDEX
    if not Path(artifacts_dir).is_dir():
        raise UserError(f"no artifacts folder {artifacts_dir}: nothing to index (train a run first)")
    atomic_write_bytes(path, index_page(artifacts_dir).encode("utf-8"))
    return path
