"""A run folder as the report reads it: every file read leniently, and what is missing or cannot
be read noted in one line each, so a damaged run still gets a report that says so."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import UserError
from ..evaluation.scoring import EVAL_FILE
from ..io import JSON_MAX_BYTES, METRICS_MAX_BYTES, PNG_MAX_BYTES, NotReadable, read_bounded
from ..runs.store import CHECKPOINT_META, CONFIG, METRICS, PROGRESS, RUN_INFO, load_config, read_evals, read_metrics
from ..runs.summary import RunSummary, summarize_run
from .charts import number
from .html import png_size

SAMPLES = "samples.png"  # the end-of-run grid (sampling/outputs.py)


class RunFiles:
    """The files of one run folder, read once: ``None`` for each that is missing or unreadable,
    with the reason in ``problems``."""

    def __init__(self, run_dir: Path, evaluation: int | None = None):
        """``evaluation`` K: :attr:`eval` is the run's K-th evaluation in ``evals.jsonl`` (from 1,
        the oldest) instead of ``eval.json``, and :attr:`name` is ``NAME@K``."""
        self.dir = run_dir
        self.name = run_dir.name if evaluation is None else f"{run_dir.name}@{evaluation}"
        self.problems: list[str] = []
        self.summary: RunSummary = summarize_run(run_dir)
        self.info = self.json(RUN_INFO)
        self.cfg = self._config()
        self.checkpoint = self.json(CHECKPOINT_META)
        self.eval = self.json(EVAL_FILE, optional=True) if evaluation is None else self.evals()[evaluation - 1]
        self.records = self._metrics()

    def evals(self) -> list[dict[str, Any]]:
        """Every evaluation of ``evals.jsonl``, oldest first (none, with a note, if it cannot be read)."""
        try:
            return read_evals(self.dir)
        except UserError as e:
            self.note(str(e))
            return []

    def note(self, problem: str) -> None:
        self.problems.append(problem.replace(f"{self.dir}{os.sep}", ""))  # the report names the run already

    def _bytes(self, path: Path, name: str, optional: bool, max_bytes: int, what: str) -> bytes | None:
        """The file's bytes (:func:`read_bounded`: a regular file of at most ``max_bytes``); None
        (and a note, unless ``optional`` and absent) if it cannot be read."""
        try:
            return read_bounded(path, max_bytes, what)
        except FileNotFoundError:
            if not optional:
                self.note(f"{name} is missing")
        except NotReadable as e:
            self.note(f"{name} cannot be read ({e.reason})")
        return None

    def json(self, name: str, *, optional: bool = False) -> dict[str, Any] | None:
        """The JSON object in the file ``name``; None (and a note, unless ``optional`` and absent)
        if it is missing, unreadable, not JSON or not an object."""
        raw = self._bytes(self.dir / name, name, optional, JSON_MAX_BYTES, "a JSON file")
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            self.note(f"{name} is not valid JSON ({e})")
            return None
        if not isinstance(data, dict):
            self.note(f"{name} holds {type(data).__name__}, not a JSON object")
            return None
        return data

    def png(self, path: Path, *, optional: bool = False) -> bytes | None:
        """The bytes of a PNG that decodes; None (and a note, unless ``optional`` and absent) else."""
        name = path.relative_to(self.dir).as_posix()
        data = self._bytes(path, name, optional, PNG_MAX_BYTES, "a PNG image")
        if data is None:
            return None
        if png_size(data) is None:
            self.note(f"{name} is not a readable PNG image")
            return None
        return data

    def _config(self) -> RunConfig | None:
        if not (self.dir / CONFIG).exists():
            self.note(f"{CONFIG} is missing")
            return None
        try:
            return load_config(self.dir)
        except UserError as e:
            self.note(str(e))
            return None

    def _metrics(self) -> list[dict[str, Any]]:
        raw = self._bytes(self.dir / METRICS, METRICS, False, METRICS_MAX_BYTES, "a metrics log")
        if raw is None:
            return []
        try:
            records = read_metrics(self.dir)
        except UserError as e:  # changed since it was read just now
            self.note(str(e))
            return []
        lines = sum(1 for line in raw.decode(errors="replace").splitlines() if line.strip())
        if lines > len(records):
            self.note(f"{METRICS}: {lines - len(records)} of its {lines} lines are not JSON objects (skipped)")
        return records

    def meta(self, key: str) -> float | None:
        """A number of checkpoint.json, or None."""
        return number(self.checkpoint.get(key)) if self.checkpoint else None

    @property
    def total_steps(self) -> int | None:
        """The steps the run's epochs plan (the learning rate follows them), from checkpoint.json."""
        per_epoch = self.meta("steps_per_epoch")
        return int(per_epoch) * self.cfg.train.epochs if per_epoch and self.cfg else None

    def progress_grids(self) -> list[tuple[int, Path]]:
        """(step, path) of every grid in ``progress/`` (train --sample-every), by step."""
        folder = self.dir / PROGRESS
        found = []
        for path in sorted(folder.glob("samples-*.png")) if folder.is_dir() else []:
            step = path.stem.removeprefix("samples-")
            if step.isdigit():
                found.append((int(step), path))
        return sorted(found)
