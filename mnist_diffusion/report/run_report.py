"""``report.html``: one self-contained page about a run (`mnistdiff report`, and `train` at the end
of every run). It shows the command and config that made the run, the machine, the training
curves, the samples (at the end, while training, and a denoising trajectory drawn when the report
is written), the evaluation, the guide and clusters, and every file checked against the manifest.

The same folder gives the same bytes: nothing depends on the time the report is written, and
matplotlib writes no version or date into its PNGs. Every string from the run is escaped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ..io import atomic_write_bytes
from ..runs.store import REPORT
from . import sections
from .html import Safe, page, tag
from .reader import RunFiles

# (anchor, heading, the section's HTML from the run's files), in the page's order
SECTIONS: list[tuple[str, str, Callable[[RunFiles], list[Safe]]]] = [
    ("made", "How it was made", sections.made),
    ("config", "Config", sections.config),
    ("environment", "Environment", lambda run: sections.machine()),
    ("training", "Training", sections.training),
    ("samples", "Samples", sections.samples),
    ("evaluation", "Evaluation", sections.evaluation),
    ("guide", "Guide and clusters", sections.guide_and_clusters),
    ("files", "Files", sections.files),
]


def run_report(run_dir: Path, device: str = "cpu") -> str:
    """The report of the run in ``run_dir`` as HTML text, its trajectory drawn on ``device``; missing or
    damaged files are named in it."""
    run = RunFiles(run_dir)
    builds = {anchor: build for anchor, _, build in SECTIONS}
    builds["samples"] = functools.partial(sections.samples, device=device)
    parts = {anchor: build(run) for anchor, build in builds.items()}  # before the overview: they note problems too
    body = [
        tag("h1", run_dir.name),
        tag("p", "mnistdiff run report", class_="muted"),
        tag("nav", [tag("a", heading, href=f"#{anchor}") for anchor, heading, _ in SECTIONS]),
        *sections.overview(run),
    ]
    for anchor, heading, _ in SECTIONS:
        body.append(tag("section", [tag("h2", heading), *parts[anchor]], id=anchor))
    return page(f"{run_dir.name}: mnistdiff run report", body)


def write_report(run_dir: Path, device: str = "cpu") -> Path:
    """Write ``report.html`` into the run folder (atomically), its trajectory drawn on ``device``;
    returns its path."""
    path = Path(run_dir) / REPORT
    atomic_write_bytes(path, run_report(Path(run_dir), device).encode("utf-8"))
    return path
