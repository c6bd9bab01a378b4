"""Files on disk, safely.

- Crash-safe writing: every file goes to a temporary name in its folder, is fsynced, then renamed
  into place and the folder fsynced, so a crash or a full disk never leaves a half-written file
  under its real name, and a finished write survives a power cut.
- Verified tensors: every safetensors file we write carries a digest of its content in its
  metadata, checked when it is read back.
- Bounded reading: a file of a run or artifacts folder is read only if it is a regular file (not a
  symlink, a FIFO, a device or a folder) and no larger than the cap for its kind, so a
  ``config.json`` linked to ``/dev/zero`` is one error line, not all the memory there is.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .errors import UserError

# The most bytes read from each kind of file (read_bounded); a larger file is refused as damaged.
JSON_MAX_BYTES = 16 << 20  # config.json, checkpoint.json, eval.json, run.json, manifest.json: a few KiB each
NAME_MAX_BYTES = 4096  # artifacts/latest: one run folder's name
METRICS_MAX_BYTES = 1 << 30  # metrics.jsonl: ~150 bytes a logged step, so millions of steps
PNG_MAX_BYTES = 64 << 20  # sample grids, figures and drawings: a 64-digit grid is a few KiB
FEATURE_NET_MAX_BYTES = 256 << 20  # the shipped feature net's weights: about 1 MiB


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


def check_output(path: Path | None, suffixes: tuple[str, ...], flag: str) -> None:
    """A one-line UserError naming ``flag``, to be raised before any work, unless ``path`` (None:
    nothing to write) names a file that can be written: not empty, not a folder, ending in one of
    ``suffixes``, in a folder that exists."""
    if path is None:
        return
    path = Path(path)
    if path.name in ("", ".", ".."):  # "", "." and "/" alike
        raise UserError(f"{flag} needs the name of a file to write (got {str(path)!r})")
    if os.path.isdir(path):
        example = path / f"out{suffixes[0]}"
        raise UserError(f"{flag} {path} is a folder; name the file to write in it, such as {example}")
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: the file's name must end in {' or '.join(suffixes)}")
    if not os.path.isdir(path.parent):
        raise UserError(f"{flag} {path}: the folder {path.parent} does not exist")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class NotReadable(UserError):
    """A file that :func:`read_bounded` refuses or cannot read: ``reason`` says why, without the path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for an error message."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, *, follow_links: bool = False) -> Iterator[tuple[BinaryIO, int]]:
    """The regular file ``path`` open for binary reading, and its size. Anything else is a
    :class:`NotReadable`: a symlink (unless ``follow_links``), a folder, a FIFO, a device; a missing
    file raises ``FileNotFoundError`` for the caller to word. The file is opened without following a
    final symlink (``O_NOFOLLOW``) and without waiting for a FIFO's writer, then checked on the open
    file itself (``fstat``), so it cannot be swapped between the check and the read."""
    nofollow = 0 if follow_links else getattr(os, "O_NOFOLLOW", 0)
    if not follow_links and not nofollow and Path(path).is_symlink():  # no O_NOFOLLOW (Windows)
        raise NotReadable(path, "a symbolic link; refusing to follow it")
    flags = os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if nofollow and os.path.islink(path):  # O_NOFOLLOW's ELOOP (EMLINK, EFTYPE on some systems)
            raise NotReadable(path, "a symbolic link; refusing to follow it") from None
        raise NotReadable(path, f"cannot read it ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotReadable(path, f"{_kind(info.st_mode)}, not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, info.st_size


def read_bounded(path: str | os.PathLike, max_bytes: int, what: str = "a file", *, follow_links: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), refused as a
    :class:`NotReadable` if it holds more than ``max_bytes`` (``what``, such as "a JSON file",
    names the kind of file in that message). A missing file raises ``FileNotFoundError``."""
    try:
        with open_regular(path, follow_links=follow_links) as (f, size):
            data = f.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise NotReadable(path, f"cannot read it ({e.strerror or e})") from None
    if size > max_bytes or len(data) > max_bytes:
        raise NotReadable(path, f"{max(size, len(data)):,} bytes, over the {max_bytes:,} allowed for {what}")
    return data


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the regular file ``source`` (:func:`open_regular`: never through a symlink) to
    ``target`` atomically (:func:`atomic_open`)."""
    with open_regular(source) as (src, _), atomic_open(target) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of the regular file ``path``; a symlink, FIFO, device or folder is a
    :class:`NotReadable` (:func:`open_regular`)."""
    h = hashlib.sha256()
    with open_regular(path) as (f, _):
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file itself, not a symlink to one (unlike ``Path.is_file``)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


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
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is {_kind(mode)}, not a regular safetensors file")
    try:
        with safe_open(path, framework="pt") as f:
            tensors, metadata = {k: f.get_tensor(k).clone() for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if DIGEST_KEY in metadata and tensors_digest(tensors, metadata) != metadata[DIGEST_KEY]:
        raise UserError(f"{path} does not match the digest it was written with: the file is corrupt")
    return tensors, metadata
