"""What `mnistdiff runs` lists: one summary per run folder, and a readable reason for every folder
whose files cannot be read."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import INT_LIMIT
from ..errors import UserError
from ..io import JSON_MAX_BYTES, NotReadable, read_bounded
from .lock import is_locked
from .store import _RUN_RE, CHECKPOINT_META, CONFIG, is_finished, load_config, runs_dir


@dataclass
class RunSummary:
    name: str
    path: Path
    created: str
    finished: bool
    preset: str | None = None  # None where config.json is unreadable
    epochs: int | None = None  # None where config.json is unreadable
    step: int | None = None  # 0 before the first checkpoint; None where checkpoint.json is unreadable
    final_loss: float | None = None
    fid: float | None = None
    fid_n: int | None = None  # the N the FID was computed at (FID depends on N)
    problem: str | None = None  # why the run is listed as unreadable: each bad file and what is wrong, one line
    training: bool = False  # another process holds the run's lock: it is being trained now

    @property
    def status(self) -> str:
        """unreadable, done (its final weights are in its manifest), training (another process
        holds its lock), resumable (a checkpoint past step 0) or started."""
        if self.problem:
            return "unreadable"
        if self.finished:
            return "done"
        return "training" if self.training else "resumable" if self.step else "started"


def summarize_runs(artifacts_dir: str | os.PathLike) -> list[RunSummary]:
    """One summary per run folder, oldest first. A folder whose config.json, checkpoint.json or
    eval.json is missing, corrupt or ill-typed is listed all the same, with ``problem`` set."""
    root = runs_dir(artifacts_dir)
    folders = sorted(p for p in root.iterdir() if _RUN_RE.match(p.name) and p.is_dir()) if root.is_dir() else []
    return [summarize_run(p) for p in folders]


def summarize_run(run_dir: Path) -> RunSummary:
    """The summary of one run folder (see :func:`summarize_runs`)."""
    summary = RunSummary(run_dir.name, run_dir, created=_created(run_dir), finished=_finished(run_dir))
    summary.training = not summary.finished and is_locked(run_dir)
    problems = []
    try:
        cfg = load_config(run_dir)
        summary.preset, summary.epochs = cfg.preset, cfg.train.epochs
    except UserError as e:
        problems.append(str(e).replace(f"{run_dir}{os.sep}", ""))  # the row names the run already
    try:
        meta = _read_json_object(run_dir / CHECKPOINT_META)
        summary.step = 0 if meta is None else _number(meta, "step", CHECKPOINT_META, integer=True)
        if meta is not None and meta.get("loss") is not None:
            summary.final_loss = _number(meta, "loss", CHECKPOINT_META, finite=False)
    except UserError as e:
        problems.append(str(e))
    try:
        report = _read_json_object(run_dir / "eval.json")
        if report is not None:
            model = report.get("model")
            if not isinstance(model, dict):
                raise UserError(f"eval.json: model is {reprlib.repr(model)}, expected an object")
            summary.fid = _number(model, "fid", "eval.json", label="model.fid")
            summary.fid_n = _number(report, "n", "eval.json", integer=True, minimum=1)
    except UserError as e:
        summary.fid = None
        problems.append(str(e))
    summary.problem = "; ".join(problems) or None
    return summary


def _finished(run_dir: Path) -> bool:
    """:func:`is_finished`, False where the weights cannot be hashed (a symlink, a FIFO, ...)."""
    try:
        return is_finished(run_dir)
    except (UserError, OSError):
        return False


def _created(run_dir: Path) -> str:
    """When the run began (its config.json's mtime, else the folder's), or "?"."""
    for path in (run_dir / CONFIG, run_dir):
        try:
            return dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        except (OSError, OverflowError, ValueError):
            continue
    return "?"


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if there is no such file. A file that cannot be read, is
    not JSON, holds something other than an object, is not a regular file or is over
    ``JSON_MAX_BYTES`` is a UserError naming the file."""
    try:
        data = json.loads(read_bounded(path, JSON_MAX_BYTES, "a JSON file"))
    except FileNotFoundError:
        return None
    except NotReadable as e:
        raise UserError(f"{path.name}: {e.reason}") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, over 4300 digits, nested past the stack
        raise UserError(f"{path.name}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: holds {type(data).__name__}, expected a JSON object")
    return data


def _number(
    data: dict[str, Any],
    key: str,
    where: str,
    *,
    integer: bool = False,
    finite: bool = True,
    minimum: int = 0,
    label: str | None = None,
) -> Any:
    """``data[key]`` checked: with ``integer`` a whole number from ``minimum`` up that fits in 64
    bits, else a float (finite with ``finite``). Bools are not numbers. Anything else is a UserError
    naming ``where`` and ``label`` (default: ``key``)."""
    value = data.get(key)
    is_int = isinstance(value, int) and not isinstance(value, bool) and -INT_LIMIT <= value < INT_LIMIT
    if integer:
        ok = is_int and value >= minimum
    else:
        ok = (is_int or isinstance(value, float)) and (math.isfinite(value) or not finite)
    if not ok:
        expected = f"a whole number >= {minimum}" if integer else "a finite number" if finite else "a number"
        found = f"is {reprlib.repr(value)}" if key in data else "is missing"
        raise UserError(f"{where}: {label or key} {found}, expected {expected}")
    return value if integer else float(value)
