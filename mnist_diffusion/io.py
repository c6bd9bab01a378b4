"""Files on disk, safely.

- Crash-safe writing: every file goes to a temporary name in its folder, is fsynced, then renamed
  into place and the folder fsynced, so a crash or a full disk never leaves a half-written file
  under its real name, and a finished write survives a power cut.
- Verified tensors: every safetensors file we write carries a digest of its content in its
  metadata, checked when it is read back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .errors import UserError

# Fault-injection hook for the tests (tests/test_faults.py): "NAME:K" makes the K-th write of a
# file called NAME stop after its bytes are written, before the rename, print a line to stderr
# and sleep, so a test can kill the process in the middle of that write. Unset in normal use.
PAUSE_ENV = "MNISTDIFF_PAUSE_IN_WRITE"
_pause_counts: dict[str, int] = {}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success fsync it, rename it to
    ``path`` and fsync the folder; on any exception remove it and leave ``path`` as it was.

    The temporary file is created with mode 0o666, so the process umask gives it the same
    permissions as any other new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _maybe_pause(path.name)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # say which file could not be written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (POSIX; a no-op where folders cannot be
    opened, such as Windows)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _maybe_pause(name: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _pause_counts[name] = _pause_counts.get(name, 0) + 1
    if _pause_counts[name] == int(count or 1):
        print(f"paused in the write of {name}", file=sys.stderr, flush=True)
        time.sleep(3600)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a regular file atomically (:func:`atomic_open`), never through a symlink."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(source, flags), "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise UserError(f"{source} is not a regular file")
        with atomic_open(target) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


DIGEST_KEY = "mnistdiff_sha256"  # safetensors metadata: tensors_digest() of the file's tensors and other metadata


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, and the metadata, in a fixed order:
    what a file written by :func:`save_tensors` carries under ``DIGEST_KEY``."""
    h = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != DIGEST_KEY}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, with a digest of its content in the metadata; the same
    tensors and metadata give the same bytes."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = dict(metadata or {})
    metadata[DIGEST_KEY] = tensors_digest(tensors, metadata)
    atomic_write_bytes(path, _sorted_header(save(tensors, metadata=metadata)))


def _sorted_header(blob: bytes) -> bytes:
    """A safetensors file with its JSON header's keys in sorted order. safetensors writes the header
    from a hash map, in an order that changes from one call to the next; the same JSON, compact and
    sorted, is as long (space-padded if shorter), so the tensors' offsets stay as they are."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = header.encode()
    if len(encoded) > n:  # not expected: keep the file as safetensors wrote it
        return blob
    return blob[:8] + encoded.ljust(n, b" ") + blob[8 + n :]


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file is a one-line UserError."""
    return load_tensors_and_metadata(path)[0]


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (copied out of the file, so it is not held open or mapped) and the metadata of
    a safetensors file. A file that carries a digest (:func:`save_tensors`) must match it."""
    if not path.is_file():
        raise UserError(f"{path} is missing")
    try:
        with safe_open(path, framework="pt") as f:
            tensors, metadata = {k: f.get_tensor(k).clone() for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if DIGEST_KEY in metadata and tensors_digest(tensors, metadata) != metadata[DIGEST_KEY]:
        raise UserError(f"{path} does not match the digest it was written with: the file is corrupt")
    return tensors, metadata
