"""New run folders: ``runs/NNNNN-name``, numbered in order, set up under a hidden name and
published whole, never reused."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write_bytes, fsync_dir
from . import lock
from .store import _RUN_RE, runs_dir

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PARTIAL = ".partial"  # suffix of the hidden name of a run folder being set up (NewRun)


@dataclasses.dataclass
class NewRun:
    """A run folder being set up: hidden as ``runs/.NNNNN-name.partial`` until :meth:`publish`
    renames it to ``runs/NNNNN-name`` and points ``latest`` at it, so a run folder only ever
    appears whole. :meth:`discard` puts the artifacts folder back exactly as it was."""

    path: Path  # the hidden folder to fill
    final: Path  # its name once published
    artifacts_dir: Path
    made: list[Path]  # what reserving it created (folders, the number's file), to remove on discard

    def publish(self) -> Path:
        """Rename the folder to its final name, make that durable, point ``latest`` at it. The
        folder's lock stays held (it is released with :func:`runs.lock.release` of the final path)."""
        os.rename(self.path, self.final)
        lock.moved(self.path, self.final)
        fsync_dir(self.final.parent)
        set_latest(self.artifacts_dir, self.final)
        self.path, self.made = self.final, []
        return self.final

    def discard(self) -> None:
        """Remove the hidden folder and everything reserving it created, and free its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        lock.release(self.path)
        for made in reversed(self.made):
            with contextlib.suppress(OSError):
                made.unlink() if made.is_file() else made.rmdir()  # a folder others filled meanwhile stays
        self.made = []


def reserve_run(artifacts_dir: str | os.PathLike, name: str) -> NewRun:
    """Reserve ``runs/NNNNN-name`` with the next free number and create its hidden folder, locked
    by this process (:class:`NewRun`). The number is reserved first, by creating the empty file
    ``.run-numbers/NNNNN`` with ``O_EXCL``, so two processes starting at once never get the same
    number, even under different names; a published number is never reused."""
    if not _NAME_RE.match(name):
        raise UserError(f"run name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    artifacts_dir = Path(artifacts_dir)
    root, numbers = runs_dir(artifacts_dir), artifacts_dir / ".run-numbers"
    made: list[Path] = []  # what this created, to remove again if it fails
    try:
        for folder in (artifacts_dir, root, numbers):
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                made.append(folder)
        _remove_abandoned(root)
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _RUN_RE.match(p.name.lstrip(".")))]
        taken += [int(p.name) for p in numbers.iterdir() if p.name.isascii() and p.name.isdigit()]
        number = max(taken, default=-1) + 1
        while True:
            try:
                os.close(os.open(numbers / f"{number:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                number += 1
        made.append(numbers / f"{number:05d}")
        final = root / f"{number:05d}-{name}"
        # Locked before it takes the name that _remove_abandoned looks for, so no other process removes it.
        born, path = root / f".{final.name}.init", root / f".{final.name}{PARTIAL}"
        born.mkdir()
        made.append(born)
        lock.acquire(born)
        os.rename(born, path)
        lock.moved(born, path)
        return NewRun(path, final, artifacts_dir, made[:-1])
    except BaseException as e:
        for path in reversed(made):
            with contextlib.suppress(OSError, KeyError):
                if path.is_file():
                    path.unlink()
                elif path.name.endswith(".init"):
                    lock.release(path)
                    shutil.rmtree(path)
                else:
                    path.rmdir()  # only if empty: a folder another process filled meanwhile stays
        if isinstance(e, OSError):
            raise UserError(f"cannot create a run folder in {root}: {e.strerror or e}") from None
        raise


def _remove_abandoned(root: Path) -> None:
    """Remove the hidden folders of runs whose set-up was killed (their lock is free)."""
    for p in root.iterdir():
        if p.name.startswith(".") and p.name.endswith(PARTIAL) and p.is_dir() and not p.is_symlink():
            if not lock.is_locked(p):
                shutil.rmtree(p, ignore_errors=True)


def set_latest(artifacts_dir: str | os.PathLike, run_dir: Path) -> None:
    atomic_write_bytes(Path(artifacts_dir) / "latest", (run_dir.name + "\n").encode())
