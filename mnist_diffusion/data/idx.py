"""MNIST's IDX files: a big-endian header (a magic number that names the type and the number of
dimensions, then each dimension) and the uint8 data, read with every size checked against the
header in exact arithmetic, and written atomically."""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_open, read_bounded

IMAGE_SIZE = 28
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_MAX_BYTES = 256 << 20  # an IDX file (or what its .gz holds) at most: MNIST's largest is 47,040,016 bytes


class MnistMissing(UserError):
    """An MNIST IDX file is not in the data dir (neither plain nor ``.gz``)."""


def write_idx_images(path: str | os.PathLike, images: np.ndarray) -> None:
    """Write uint8 ``images`` of shape (N, 28, 28) as an IDX3 file, atomically."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    _write_idx(path, IDX_IMAGES_MAGIC, images)


def write_idx_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write integer ``labels`` of shape (N,), each in 0..9, as an IDX1 file, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"expected integer labels of shape (N,), got {labels.dtype} {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, outside 0..9")
    _write_idx(path, IDX_LABELS_MAGIC, labels.astype(np.uint8))


def _write_idx(path: str | os.PathLike, magic: int, array: np.ndarray) -> None:
    header = np.array([magic, *array.shape], dtype=">u4")  # big-endian int32s
    with atomic_open(path) as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(array).tobytes())


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (or ``path.gz``), checked against its header."""
    gz = path.with_name(path.name + ".gz")
    if path.exists():
        data = _read_bytes(path, lambda: read_bounded(path, IDX_MAX_BYTES, "an IDX file", follow_links=True))
    elif gz.exists():
        path = gz
        data = _read_bytes(gz, lambda: _gunzip_bounded(gz))
    else:
        raise MnistMissing(f"MNIST file {path} is missing (nor is there a {gz.name})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated, {len(data)} bytes is shorter than the {header}-byte IDX header")
    found, *dims = np.frombuffer(data, dtype=">u4", count=1 + ndim).tolist()
    if found != magic:
        raise UserError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x} (not an MNIST IDX file)")
    expected = header + math.prod(dims)  # exact: no integer type to overflow, whatever the header claims
    if len(data) != expected:
        raise UserError(
            f"{path}: {len(data):,} bytes, but its header claims shape {tuple(dims)}, which takes "
            f"{expected:,}: truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _gunzip_bounded(path: Path) -> bytes:
    """What the gzip file ``path`` holds, refused past ``IDX_MAX_BYTES`` (a gzip bomb)."""
    raw = read_bounded(path, IDX_MAX_BYTES, "an IDX file", follow_links=True)
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
        data = f.read(IDX_MAX_BYTES + 1)
    if len(data) > IDX_MAX_BYTES:
        raise UserError(f"{path}: holds over {IDX_MAX_BYTES:,} bytes, more than an IDX file of MNIST")
    return data


def _read_bytes(path: Path, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a broken gzip stream
        raise UserError(f"{path}: cannot read ({e})") from e
