"""One writer per run: an operating-system lock on ``RUN/.lock``, held for the whole of `train`.

The lock is the kernel's (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so it goes with the
process: a run whose trainer was killed, even with SIGKILL, is free again at once, and its
``train --resume`` takes the lock without anyone removing a stale file. The holder writes its
process id into the file, so a second writer is refused with a line that names it.

Within one process the lock is re-entrant: the CLI takes it before it reads a run's plan, and
the trainer takes it again for the run it trains.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

LOCK = ".lock"  # in a run folder; hidden, so the manifest leaves it out

_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK, getattr(errno, "EDEADLOCK", errno.EDEADLK)}
_held: dict[Path, tuple[int, int]] = {}  # run folder -> (open file descriptor, times taken in this process)


class RunBusy(UserError):
    """Another process is writing the run."""


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` without waiting; False if another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:  # held elsewhere: EWOULDBLOCK (POSIX), EACCES or EDEADLOCK (Windows)
        if e.errno in _BUSY:
            return False
        raise
    return True


def _holder(path: Path) -> str:
    """The process id written by the lock's holder, as text ("unknown" if unreadable)."""
    try:
        with open(path, "rb") as f:
            text = f.read(32).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isascii() and text.isdigit() else "unknown"


def acquire(run_dir: Path) -> None:
    """Take ``run_dir``'s lock (again, if this process holds it), or raise :class:`RunBusy`."""
    key = Path(os.path.realpath(run_dir))
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    path = key / LOCK
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        raise UserError(f"cannot lock run {run_dir.name} ({path}): {e.strerror or e}") from None
    if not _try_lock(fd):
        os.close(fd)
        raise RunBusy(
            f"run {run_dir.name} is being written by process {_holder(path)} (a training or resume still running); "
            "wait for it to end, or stop it first"
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = (fd, 1)


def release(run_dir: Path) -> None:
    """Give back one :func:`acquire` of ``run_dir``; the last one closes the file, which frees the lock."""
    key = Path(os.path.realpath(run_dir))
    fd, count = _held[key]
    if count > 1:
        _held[key] = (fd, count - 1)
        return
    del _held[key]
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # no holder any more; the file itself stays (removing it would race a new holder)
    os.close(fd)


def moved(old: Path, new: Path) -> None:
    """Tell the registry that a held run folder was renamed from ``old`` to ``new``."""
    old_key, new_key = Path(os.path.realpath(old)), Path(os.path.realpath(new))
    if old_key in _held:
        _held[new_key] = _held.pop(old_key)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block (see :func:`acquire`)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds ``run_dir``'s lock now (a check, not a promise)."""
    path = Path(run_dir) / LOCK
    if Path(os.path.realpath(run_dir)) in _held or not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)  # closing frees the lock just taken
