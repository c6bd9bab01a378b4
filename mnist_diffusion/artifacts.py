"""Run folders: ``artifacts/runs/NNNNN-NAME/``, created atomically, never reused.

A run folder describes itself: ``config.json``, ``model.safetensors`` (EMA weights, with the
config and package version in its metadata), ``checkpoint.safetensors`` + ``checkpoint.json``
(everything needed to resume), ``metrics.jsonl``, ``loss.png``, ``samples.png`` and
``manifest.json`` (sha256 of every file, the package version); unconditional runs also keep
``guide.safetensors``, the EMA weights from early in training that autoguidance steers away
from, and runs trained on pixel clusters keep ``clusters.safetensors`` (each training image's
cluster and the clusters' sizes). ``artifacts/latest`` holds the name of the newest run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from . import __version__
from .config import INT_LIMIT, RunConfig
from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json, sha256_file

DEFAULT_ARTIFACTS_DIR = Path("artifacts")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RUN_RE = re.compile(r"^(\d{5})-")

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GUIDE = "guide.safetensors"
CLUSTERS = "clusters.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"


def runs_dir(artifacts_dir: str | os.PathLike) -> Path:
    return Path(artifacts_dir) / "runs"


def create_run_dir(artifacts_dir: str | os.PathLike, name: str) -> Path:
    """Create ``runs/NNNNN-name`` with the next free number. ``mkdir`` without ``exist_ok`` is
    atomic, so two processes starting at once never share a folder."""
    if not _NAME_RE.match(name):
        raise UserError(f"run name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    root = runs_dir(artifacts_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root}: {e.strerror}") from None
    taken = [int(m.group(1)) for p in root.iterdir() if (m := _RUN_RE.match(p.name))]
    number = max(taken, default=-1) + 1
    while True:
        path = root / f"{number:05d}-{name}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1
        except OSError as e:
            raise UserError(f"cannot create {path}: {e.strerror}") from None


def set_latest(artifacts_dir: str | os.PathLike, run_dir: Path) -> None:
    atomic_write_bytes(Path(artifacts_dir) / "latest", (run_dir.name + "\n").encode())


def resolve_run(run: str | None, artifacts_dir: str | os.PathLike = DEFAULT_ARTIFACTS_DIR) -> Path:
    """A run folder from a path, a run name (``00003-default`` or just ``default`` for the newest
    of that name, or ``3``), or None for the latest run."""
    artifacts_dir = Path(artifacts_dir)
    if run is None:
        latest = artifacts_dir / "latest"
        if not latest.is_file():
            raise UserError(f"no runs yet in {artifacts_dir} (train one with `mnistdiff train`)")
        run = latest.read_text().strip()
    path = Path(run)
    if path.is_dir() and (path / CONFIG).is_file():
        return path
    root = runs_dir(artifacts_dir)
    candidates = sorted(root.iterdir()) if root.is_dir() else []
    for p in reversed(candidates):
        if p.name == run or p.name.split("-", 1)[-1] == run or (run.isdigit() and p.name[:5] == f"{int(run):05d}"):
            if (p / CONFIG).is_file():
                return p
    raise UserError(f"unknown run {run!r}: no such folder, and no run of that name in {root} (see `mnistdiff runs`)")


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_json(run_dir / CONFIG, cfg.to_dict())


def load_config(run_dir: Path) -> RunConfig:
    """A run's ``config.json``; a missing, unreadable, malformed or ill-typed one is a one-line UserError."""
    path = run_dir / CONFIG
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, over 4300 digits, nested past the stack
        raise UserError(f"{path} is not valid JSON: {e}") from None
    try:
        return RunConfig.from_dict(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{path} is not a valid config: {e}") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file is a one-line UserError."""
    return load_tensors_and_metadata(path)[0]


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path} is missing")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None


def weights_metadata(cfg: RunConfig) -> dict[str, str]:
    return {"config": json.dumps(cfg.to_dict(), sort_keys=True), "mnist_diffusion_version": __version__}


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    """Load a state dict saved by :func:`save_tensors`, refusing any mismatch with the config."""
    state = load_tensors(path)
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
    path = run_dir / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


def write_manifest(run_dir: Path) -> None:
    """sha256 and size of every file in the run folder, and the package version."""
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(run_dir.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
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


@dataclass
class RunSummary:
    name: str
    path: Path
    created: str
    preset: str | None  # None where config.json is unreadable
    epochs: int | None  # None where config.json is unreadable
    step: int | None  # 0 before the first checkpoint; None where checkpoint.json is unreadable
    final_loss: float | None
    fid: float | None
    fid_n: int | None  # the N the FID was computed at (FID depends on N)
    finished: bool
    problem: str | None = None  # why the run is listed as unreadable: each bad file and what is wrong, one line


def summarize_runs(artifacts_dir: str | os.PathLike) -> list[RunSummary]:
    """One summary per run folder, oldest first. A folder whose config.json, checkpoint.json or
    eval.json is missing, corrupt or ill-typed is listed all the same, with ``problem`` set."""
    root = runs_dir(artifacts_dir)
    folders = sorted(p for p in root.iterdir() if _RUN_RE.match(p.name) and p.is_dir()) if root.is_dir() else []
    return [_summarize(p) for p in folders]


def _summarize(run_dir: Path) -> RunSummary:
    summary = RunSummary(
        name=run_dir.name, path=run_dir, created=_created(run_dir), preset=None, epochs=None, step=None,
        final_loss=None, fid=None, fid_n=None, finished=(run_dir / WEIGHTS).is_file(),
    )  # fmt: skip
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
    not JSON or holds something other than an object is a UserError naming the file."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"{path.name}: cannot read it ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, over 4300 digits, nested past the stack
        raise UserError(f"{path.name}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: holds {type(data).__name__}, expected a JSON object")
    return data


def _number(data: dict[str, Any], key: str, where: str, *, integer: bool = False, finite: bool = True,
            minimum: int = 0, label: str | None = None) -> Any:  # fmt: skip
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
