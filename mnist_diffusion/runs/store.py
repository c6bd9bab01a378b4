"""Run folders: ``artifacts/runs/NNNNN-NAME/``, created atomically, never reused.

A run folder describes itself: ``config.json``, ``model.safetensors`` (EMA weights, with the
config and package version in its metadata), ``checkpoint.safetensors`` + ``checkpoint.json``
(everything needed to resume), ``metrics.jsonl``, ``loss.png``, ``samples.png`` and
``manifest.json`` (sha256 of every file, the package version), ``eval.json`` and ``evals.jsonl``
(the newest evaluation, and every one), and last ``finished.json`` (the
step and weights the run finished with); unconditional runs also keep
``guide.safetensors``, the EMA weights from early in training that autoguidance steers away
from, and runs trained on pixel clusters keep ``clusters.safetensors`` (each training image's
cluster and the clusters' sizes). ``artifacts/latest`` holds the name of the newest run.
A run folder appears only once it is whole: it is set up under a hidden name (runs/folder.py),
and ``.lock`` in it is held by the one process that writes it (runs/lock.py).

``report.html`` is a view of the other files, written again at will (`mnistdiff report`), so the
manifest leaves it out, as it does ``finished.json``, written after it; so are the folders
``progress/`` (sample grids taken while training) and ``tensorboard/`` (its event files), as the
manifest lists the files at the top of the folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import DEFAULT_ARTIFACTS_DIR, RunConfig
from ..errors import UserError
from ..io import (
    JSON_MAX_BYTES,
    METRICS_MAX_BYTES,
    NAME_MAX_BYTES,
    NotReadable,
    atomic_write_bytes,
    atomic_write_json,
    is_regular,
    load_tensors_and_metadata,
    read_bounded,
    sha256_file,
)

_RUN_RE = re.compile(r"^(\d{5})-")

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GUIDE = "guide.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"  # every `mnistdiff eval` of the run, oldest first; eval.json is the newest of them
MAX_EVALS = 1000  # the evaluations evals.jsonl keeps, the newest (a few KiB each)
MANIFEST = "manifest.json"
RUN_INFO = "run.json"
REPORT = "report.html"
FINISHED = "finished.json"  # written last: the run reached the end of its plan, with these final weights
PROGRESS = "progress"  # folder of the sample grids taken while training (train --sample-every)
_NOT_LISTED = (MANIFEST, REPORT, FINISHED)  # files of a run folder that its manifest leaves out


def progress_grid(step: int) -> str:
    """The name in ``progress/`` of the sample grid taken after optimizer step ``step``."""
    return f"samples-{step:08d}.png"


def runs_dir(artifacts_dir: str | os.PathLike) -> Path:
    return Path(artifacts_dir) / "runs"


def resolve_run(run: str | None, artifacts_dir: str | os.PathLike = DEFAULT_ARTIFACTS_DIR) -> Path:
    """A run folder from a path, a run name (``00003-default`` or just ``default`` for the newest
    of that name, or ``3``), or None for the latest run."""
    artifacts_dir = Path(artifacts_dir)
    if run is None:
        latest = artifacts_dir / "latest"
        try:
            run = read_bounded(latest, NAME_MAX_BYTES, "a run's name").decode(errors="replace").strip()
        except FileNotFoundError:
            raise UserError(f"no runs yet in {artifacts_dir} (train one with `mnistdiff train`)") from None
    try:
        path = Path(run)
        if path.is_dir() and (path / CONFIG).is_file():
            return path
    except (OSError, ValueError):  # a name too long for the file system, or holding a NUL
        pass
    root = runs_dir(artifacts_dir)
    candidates = sorted(root.iterdir()) if root.is_dir() else []
    # A run by its number, "3": ASCII digits only ("²" is a digit to str.isdigit, not to int), and few of them.
    number = int(run) if run.isascii() and run.isdigit() and len(run) <= 9 else None
    for p in reversed(candidates):
        if p.name == run or p.name.split("-", 1)[-1] == run or (number is not None and p.name[:5] == f"{number:05d}"):
            if (p / CONFIG).is_file():
                return p
    shown = run if len(run) <= 80 else run[:77] + "..."
    raise UserError(f"unknown run {shown!r}: no such folder, and no run of that name in {root} (see `mnistdiff runs`)")


def save_run_info(run_dir: Path, parent: dict[str, Any] | None = None, machine: dict[str, Any] | None = None) -> None:
    """``run.json``: how the run was made: the command line, when, on which machine
    (:meth:`~mnist_diffusion.runtime.Machine.to_dict`), the package and torch versions, and for a
    run that continues another (``train --resume`` with a longer budget) its parent's name and the
    step it started from."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    atomic_write_json(
        run_dir / RUN_INFO,
        {
            "command": " ".join(argv),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "parent": parent,
            "machine": machine,
            "mnist_diffusion_version": __version__,
            "torch_version": torch.__version__,
        },
    )


def update_run_info(run_dir: Path, **fields: Any) -> None:
    """Add ``fields`` to the run's ``run.json`` (how the run was made)."""
    path = run_dir / RUN_INFO
    try:
        info = json.loads(read_bounded(path, JSON_MAX_BYTES, "a JSON file"))
    except (OSError, ValueError, RecursionError, NotReadable):
        info = {}
    atomic_write_json(path, {**(info if isinstance(info, dict) else {}), **fields})


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_json(run_dir / CONFIG, cfg.to_dict())


def load_config(run_dir: Path) -> RunConfig:
    """A run's ``config.json``; a missing, unreadable, malformed or ill-typed one is a one-line UserError,
    as is one that is not a regular file or is over ``JSON_MAX_BYTES`` (:func:`read_bounded`)."""
    path = run_dir / CONFIG
    try:
        data = json.loads(read_bounded(path, JSON_MAX_BYTES, "a JSON file"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, over 4300 digits, nested past the stack
        raise UserError(f"{path} is not valid JSON: {e}") from None
    try:
        return RunConfig.from_dict(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{path} is not a valid config: {e}") from None


def weights_metadata(cfg: RunConfig) -> dict[str, str]:
    return {"config": json.dumps(cfg.to_dict(), sort_keys=True), "mnist_diffusion_version": __version__}


def check_same_network(path: Path, saved: RunConfig, cfg: RunConfig) -> None:
    """Refuse weights (or a checkpoint) made for another network or diffusion process than
    ``cfg``: every model and diffusion field of the config they were saved with must agree."""
    for section in ("model", "diffusion"):
        mine, theirs = getattr(cfg, section), getattr(saved, section)
        for field in dataclasses.fields(mine):
            if getattr(mine, field.name) != getattr(theirs, field.name):
                raise UserError(
                    f"{path} does not match the run's {CONFIG}: it was saved for {section}.{field.name} = "
                    f"{getattr(theirs, field.name)!r}, the config says {getattr(mine, field.name)!r}"
                )


def saved_config(path: Path, metadata: dict[str, str]) -> RunConfig:
    """The config a weights file was saved with (its metadata's ``config``)."""
    try:
        return RunConfig.from_dict(json.loads(metadata["config"]))
    except KeyError:
        raise UserError(f"{path} has no config in its metadata (not written by mnistdiff?)") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} has an unreadable config in its metadata: {e}") from None


def load_weights_into(model: torch.nn.Module, path: Path, cfg: RunConfig) -> None:
    """Load a state dict saved by :func:`save_tensors` with :func:`weights_metadata`, refusing
    weights saved for another config (:func:`check_same_network`) or of other names or shapes."""
    state, metadata = load_tensors_and_metadata(path)
    check_same_network(path, saved_config(path, metadata), cfg)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or bad_shapes:
        if missing:
            detail = f"missing {missing[:3]}"
        elif unexpected:
            detail = f"unexpected {unexpected[:3]}"
        else:
            name = bad_shapes[0]
            detail = f"{name} is {tuple(state[name].shape)}, the config makes it {tuple(own[name].shape)}"
        raise UserError(f"{path} does not match the run's config.json ({detail})")
    model.load_state_dict(state)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``, skipping lines that are not JSON objects (a line cut
    short by a crash); none if there is no such file. One that is not a regular file or is over
    ``METRICS_MAX_BYTES`` is a UserError (:func:`read_bounded`)."""
    return _read_records(run_dir / METRICS, "a metrics log")


def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations of ``evals.jsonl``, oldest first, as :func:`read_metrics` reads its log."""
    return _read_records(run_dir / EVALS, "a log of evaluations")


def append_eval(run_dir: Path, result: dict[str, Any]) -> int:
    """Add ``result`` (what ``eval.json`` holds) to ``evals.jsonl``, rewritten whole so that a
    crash leaves the old file or the new one, keeping the newest :data:`MAX_EVALS`; return the
    number of evaluations it keeps."""
    kept = [*read_evals(run_dir)[-(MAX_EVALS - 1) :], result]
    atomic_write_bytes(run_dir / EVALS, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return len(kept)


def _read_records(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        text = read_bounded(path, METRICS_MAX_BYTES, what).decode(errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def keep_metrics_until(run_dir: Path, step: int, source: Path | None = None) -> None:
    """Rewrite ``metrics.jsonl`` with only the training records of steps up to ``step`` (from
    ``source``'s metrics, default the run's own): a run resumed from its checkpoint at ``step``
    replays the steps after it, and each step must be logged once."""
    records = read_metrics(source or run_dir)
    kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step and not r.get("done")]
    if kept or (run_dir / METRICS).exists():
        atomic_write_bytes(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept).encode())


def write_manifest(run_dir: Path) -> None:
    """sha256 and size of every regular file in the run folder (but the report; not symlinks,
    FIFOs or devices), and the package version."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.lstat().st_size}
        for p in sorted(run_dir.iterdir())
        if is_regular(p) and p.name not in _NOT_LISTED and not p.name.startswith(".")
    }
    atomic_write_json(
        run_dir / MANIFEST,
        {
            "mnist_diffusion_version": __version__,
            "torch_version": torch.__version__,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        },
    )


def manifest_entry(run_dir: Path, name: str) -> str | None:
    """The sha256 that the run's manifest records for the file ``name``, or None (no manifest, or
    a manifest that does not list it or cannot be read)."""
    try:
        entry = json.loads(read_bounded(run_dir / MANIFEST, JSON_MAX_BYTES, "a JSON file"))["files"][name]["sha256"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError, NotReadable):
        return None
    return entry if isinstance(entry, str) else None


def write_finished(run_dir: Path, step: int) -> None:
    """``finished.json``: the run reached the end of its plan at ``step``, with these final
    weights. Written last, after the manifest, and kept out of it, so removing the manifest
    does not make a finished run look unfinished."""
    record = {
        "step": step,
        "weights_sha256": sha256_file(run_dir / WEIGHTS),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(run_dir / FINISHED, record)


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``finished.json`` as written by :func:`write_finished`, or None (none, or unreadable)."""
    try:
        record = json.loads(read_bounded(run_dir / FINISHED, NAME_MAX_BYTES, "finished.json"))
    except (OSError, ValueError, NotReadable):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("weights_sha256"), str) and type(record.get("step")) is int
    return record if ok else None


def is_finished(run_dir: Path) -> bool:
    """Whether a run reached the end of its plan: its final weights are written and are the ones
    that its ``finished.json`` or its manifest lists (training writes the weights, the manifest,
    then ``finished.json``)."""
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        return False
    sha = sha256_file(weights)
    record = finished_record(run_dir)
    return (record is not None and record["weights_sha256"] == sha) or manifest_entry(run_dir, WEIGHTS) == sha


def verify_manifest(run_dir: Path) -> dict[str, str]:
    """Each file's state against the manifest: "ok", "changed" (another sha256, or no longer a
    regular file: a symlink, a FIFO, ...), "missing" (listed, not there) or "unlisted" (a regular
    file there, not listed). Raises UserError for an unreadable manifest."""
    path = run_dir / MANIFEST
    try:
        listed = json.loads(read_bounded(path, JSON_MAX_BYTES, "a JSON file"))["files"]
        hashes = {name: entry["sha256"] for name, entry in listed.items()}
    except NotReadable as e:
        raise UserError(f"{path} cannot be read: {e.reason}") from None
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} cannot be read: {e}") from None
    there = {p.name: is_regular(p) for p in run_dir.iterdir() if p.name not in _NOT_LISTED and p.name[:1] != "."}
    status = {name: "missing" for name in hashes if name not in there}
    for name in sorted(there):
        if name not in hashes:
            if there[name]:
                status[name] = "unlisted"
        else:
            status[name] = "ok" if there[name] and sha256_file(run_dir / name) == hashes[name] else "changed"
    return status
