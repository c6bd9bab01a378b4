"""Sample quality of a run: the core of `mnistdiff eval`.

Samples and real MNIST test images go through the shipped feature net
(:mod:`mnist_diffusion.features`); :mod:`mnist_diffusion.metrics` compares the two sets. Every
metric comes with a *real-data floor*: the same metric for as many real training images as there
are samples, so a value can be read against what a perfect model would score at that N (FID,
precision and recall all depend on N).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.table import Table

from . import __version__, metrics
from .artifacts import load_tensors, write_manifest
from .data import DEFAULT_DATA_DIR, load_mnist
from .errors import UserError
from .features import FeatureNet, extract, load_feature_net
from .generate import generate, load_run, resolve_cluster_guidance, resolve_guidance
from .images import GRID_PADDING
from .io import atomic_write_json
from .nll import DEFAULT_NLL_TIMESTEPS, nll_bpd
from .runtime import use_bf16
from .samplers import DEFAULT_SAMPLER, resolve_steps_and_spacing

EVAL_FILE = "eval.json"
FLOOR_SEED = 0  # fixes which training images form the real-data floor, the same for every evaluation
MIN_SAMPLES = 10  # the k-NN metrics and the 10-split inception score need at least this many
TILE = 28


@dataclass(frozen=True)
class RealData:
    """Real MNIST to compare against: uint8 ``(N, 28, 28)`` images with int64 ``(N,)`` labels.

    ``test`` is the reference set of every metric; the real-data floor draws from ``train``.
    """

    test: tuple[torch.Tensor, torch.Tensor]
    train: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def from_dir(cls, data_dir: str | os.PathLike) -> RealData:
        return cls(test=load_mnist(data_dir, "test"), train=load_mnist(data_dir, "train"))

    @cached_property
    def key(self) -> str:
        """A content hash, so in-memory caches never mix up two data sets."""
        h = hashlib.sha256()
        for images, labels in (self.test, self.train):
            h.update(images.numpy().tobytes())
            h.update(labels.numpy().tobytes())
        return h.hexdigest()


# In-process caches: the feature net per device, the real data per folder, reference features per
# data set, and the real-data floor per (data set, N, KID settings).
_NETS: dict[str, tuple[FeatureNet, dict[str, Any]]] = {}
_REAL: dict[str, tuple[RealData, str]] = {}
_REFERENCE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_FLOOR: dict[tuple, dict[str, Any]] = {}


def feature_net(device: str | torch.device = "cpu") -> tuple[FeatureNet, dict[str, Any]]:
    """The shipped feature net on ``device`` and its info, loaded once per process."""
    key = str(device)
    if key not in _NETS:
        _NETS[key] = load_feature_net(device)
    return _NETS[key]


def _real_data(data_dir: str | os.PathLike | None, reference: RealData | None) -> tuple[RealData, str]:
    if reference is not None:
        return reference, reference.key
    path = str(Path(data_dir or DEFAULT_DATA_DIR).resolve())
    if path not in _REAL:
        real = RealData.from_dir(path)
        _REAL[path] = real, real.key
    return _REAL[path]


def _as_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in [0, 1]."""
    return images.unsqueeze(1).float() / 255


def real_reference(
    data_dir: str | os.PathLike | None,
    net: FeatureNet,
    *,
    reference: RealData | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` and class probabilities ``(N, 10)`` of the reference set: the 10,000
    MNIST test images in ``data_dir``, or ``reference.test``. Cached in memory per data set."""
    real, key = _real_data(data_dir, reference)
    if key not in _REFERENCE:
        _REFERENCE[key] = extract(net, _as_unit(real.test[0]), progress=progress)
    return _REFERENCE[key]


def _metrics(ref_feats, feats, probs, labels, *, seed: int, kid_subsets: int) -> dict[str, Any]:
    """Every metric of one sample set (features ``(N, D)``, probs ``(N, 10)``) against the reference."""
    kid_mean, kid_std = metrics.kid(ref_feats, feats, num_subsets=kid_subsets, seed=seed)
    is_mean, is_std = metrics.inception_score(probs, splits=min(10, len(probs)))
    out = {
        "fid": metrics.fid(ref_feats, feats),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **metrics.precision_recall(ref_feats, feats),
        **metrics.density_coverage(ref_feats, feats),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "class_histogram": metrics.class_histogram(probs),
        "mean_confidence": metrics.mean_confidence(probs),
        "confident_share": metrics.confident_share(probs, 0.9),
    }
    if labels is not None:
        out["label_accuracy"] = metrics.label_accuracy(probs, labels)
    return out


def evaluate_images(
    images: torch.Tensor,
    *,
    data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR,
    n_floor: int | None = None,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    reference: RealData | None = None,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """All metrics of ``images`` against the MNIST test set, and the real-data floor beside them.

    :param images: ``(N, 1, 28, 28)`` floats in [0, 1], N >= 10.
    :param n_floor: how many real training images form the floor (a fixed seeded random subset);
        None: N, the same as the samples; 0: no floor.
    :param labels: ``(N,)`` classes the images were asked to be (conditional sampling); adds
        ``label_accuracy``.
    :param seed: seeds the KID subsets.
    :param reference: real data to use instead of the MNIST files in ``data_dir``.
    :return: ``{"model": {...}, "real": {...} or None, "n": N, "n_floor", "n_reference",
        "feature_net": {"accuracy", "sha256"}}``; each metric dict holds ``fid``, ``kid_mean``,
        ``kid_std``, ``precision``, ``recall``, ``density``, ``coverage``, ``inception_score``,
        ``class_histogram``, ``mean_confidence``, ``confident_share`` (> 0.9) and, with labels,
        ``label_accuracy``.
    """
    images = check_images(images, "images")
    n = len(images)
    if n < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} images to evaluate, got {n}")
    if labels is not None and tuple(labels.shape) != (n,):
        raise UserError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    net, info = feature_net(device)
    real, key = _real_data(data_dir, reference)
    ref_feats, _ = real_reference(None, net, reference=real, progress=progress)
    feats, probs = extract(net, images, progress=progress)
    result = {
        "model": _metrics(ref_feats, feats, probs, labels, seed=seed, kid_subsets=kid_subsets),
        "real": None,
        "n": n,
        "n_floor": 0,
        "n_reference": len(ref_feats),
        "feature_net": {"accuracy": info["test_accuracy"], "sha256": info["sha256"]},
    }
    n_floor = n if n_floor is None else n_floor
    if n_floor:
        result["real"], result["n_floor"] = real_floor(real, key, net, n_floor, seed, kid_subsets, labels is not None)
    return result


def real_floor(real: RealData, key: str, net: FeatureNet, n: int, seed: int, kid_subsets: int, with_labels: bool
               ) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The metrics of ``n`` real training images (the first ``n`` of a permutation seeded with
    FLOOR_SEED) against the reference; cached per data set and N. Returns ``(metrics, n_used)``."""
    train_x, train_y = real.train
    n = min(n, len(train_x))
    if n < MIN_SAMPLES:
        raise UserError(f"the real-data floor needs at least {MIN_SAMPLES} training images, got {n}")
    cache_key = (key, n, seed, kid_subsets, with_labels)
    if cache_key not in _FLOOR:
        idx = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(FLOOR_SEED))[:n]
        ref_feats, _ = real_reference(None, net, reference=real)
        feats, probs = extract(net, _as_unit(train_x[idx]))
        labels = train_y[idx] if with_labels else None
        _FLOOR[cache_key] = _metrics(ref_feats, feats, probs, labels, seed=seed, kid_subsets=kid_subsets)
    return dict(_FLOOR[cache_key]), n


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    n_samples: int = 10_000,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    eta: float = 0.0,
    spacing: float | None = None,
    guidance: float | None = None,
    cluster_guidance: float | None = None,
    precision: str = "auto",
    seed: int = 0,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR,
    nll: bool = False,
    nll_images: int = 1000,
    nll_timesteps: int | None = DEFAULT_NLL_TIMESTEPS,
    progress: bool = False,
    reference: RealData | None = None,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """Sample ``n_samples`` images from a run, evaluate them, and write ``eval.json`` into the run.

    A class-conditional run samples balanced labels ``i % 10``, a clustered one draws clusters by
    size. ``guidance`` and ``cluster_guidance`` None: the defaults of :func:`resolve_guidance`
    and :func:`resolve_cluster_guidance`. With ``nll``, also the NLL bound (bits/dim) of the first
    ``nll_images`` test images.
    :return: the dict written to ``eval.json``: :func:`evaluate_images`'s result plus the sampler
        settings, the NLL and wall times.
    """
    if n_samples < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} samples to evaluate, got {n_samples}")
    if nll and nll_images < 1:
        raise UserError(f"the NLL needs at least 1 test image, got {nll_images}")
    run_dir = Path(run_dir)
    device = torch.device(device)
    run = load_run(run_dir, device)
    real, _ = _real_data(data_dir, reference)  # fail early if MNIST is missing

    start = time.perf_counter()
    labels = torch.arange(n_samples) % 10 if run.conditional else None
    guidance = resolve_guidance(run, guidance)
    cluster_guidance = resolve_cluster_guidance(run, cluster_guidance)
    images = generate(
        run, n_samples, sampler=sampler, steps=steps, eta=eta, spacing=spacing, seed=seed, labels=labels,
        guidance=guidance, cluster_guidance=cluster_guidance, precision=precision, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    sample_seconds = time.perf_counter() - start

    start = time.perf_counter()
    result = evaluate_images(images, data_dir=data_dir, labels=labels, seed=seed, device=device,
                             progress=progress, reference=real, kid_subsets=kid_subsets)  # fmt: skip
    metric_seconds = time.perf_counter() - start

    result["nll"] = None
    if nll:
        test_images = real.test[0][:nll_images]
        generator = torch.Generator(device).manual_seed(seed)
        result["nll"] = nll_bpd(run, test_images, batch_size=batch_size, generator=generator, progress=progress,
                                timesteps_subsample=nll_timesteps)  # fmt: skip

    used_steps, used_spacing = resolve_steps_and_spacing(sampler, steps, spacing, run.schedule.num_timesteps)
    result.update(
        run=run_dir.name,
        sampling={
            "sampler": sampler, "steps": used_steps, "eta": eta, "spacing": used_spacing,
            "seed": seed, "batch_size": batch_size,
            "guidance": guidance, "guide": run.guidance_kind if guidance != 1.0 else None,
            "cluster_guidance": cluster_guidance if cluster_guidance != 1.0 else None,
            "bf16": use_bf16(precision, device),
            "conditional": run.conditional,
            "labels": "i % 10" if run.conditional else "drawn from the cluster sizes" if run.clustered else None,
        },
        seconds={
            "sampling": round(sample_seconds, 2),
            "metrics": round(metric_seconds, 2),
            "nll": result["nll"]["seconds"] if result["nll"] else None,
        },
        device=str(device),
        mnist_diffusion_version=__version__,
        torch_version=torch.__version__,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    atomic_write_json(run_dir / EVAL_FILE, result)
    write_manifest(run_dir)
    return result


# ----------------------------------------------------------------------------- reading samples


def check_images(x: torch.Tensor | np.ndarray, where: str) -> torch.Tensor:
    """Validate sample images and return float32 ``(N, 1, 28, 28)`` in [0, 1].

    Accepts ``(N, 28, 28)`` or ``(N, 1, 28, 28)``, floats of any width or byte order in [0, 1] or
    uint8 in 0..255. Other integers, bools and every other dtype are refused: their scale is a guess.
    """
    if isinstance(x, np.ndarray):
        x = _native(x, where)
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, TILE, TILE):
        raise UserError(f"{where}: expected images of shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    if len(x) == 0:
        raise UserError(f"{where}: holds no images")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise UserError(f"{where}: expected floats in [0, 1] or uint8 in 0..255, got {x.dtype}")
    try:
        x = x.float()
    except (RuntimeError, NotImplementedError):  # packed types such as float4_e2m1fn_x2 have no conversion
        raise UserError(f"{where}: cannot convert {x.dtype} to float32; save float32 or uint8 images") from None
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        hint = " (images in [-1, 1]? map them with (x + 1) / 2)" if lo >= -1 - 1e-6 and hi <= 1 + 1e-6 else ""
        raise UserError(f"{where}: values span {lo:.3g}..{hi:.3g}, expected [0, 1]{hint}")
    return x.clamp(0, 1)


def _native(x: np.ndarray, where: str) -> np.ndarray:
    """A numpy array torch can take: floats in native byte order (long doubles as float64), uint8 as
    it is; any other dtype (other integers, bool, complex, strings, records) is a UserError."""
    if x.dtype.kind == "f":
        return x.astype(np.float64 if x.dtype.itemsize > 8 else x.dtype.newbyteorder("="), copy=False)
    if x.dtype == np.uint8:
        return x
    name = "a structured dtype" if x.dtype.names else x.dtype.name
    raise UserError(f"{where}: expected floats in [0, 1] or uint8 in 0..255, got {name}")


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def load_samples(path: str | os.PathLike) -> torch.Tensor:
    """Sample images from a file or folder, as float32 ``(N, 1, 28, 28)`` in [0, 1].

    - ``.safetensors``: the tensor named ``samples``, else the first one;
    - ``.npy``: one array (no pickles);
    - a folder of ``.png`` files, each one 28x28 greyscale image, in name order;
    - a ``.png`` grid written by ``mnistdiff sample`` (:func:`mnist_diffusion.images.save_grid`):
      28-pixel tiles with 2-pixel padding, at any integer upscale. Trailing all-black tiles of the
      last row are taken for the grid's empty slots and dropped.

    Arrays hold ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` values, floats in [0, 1] or uint8. PNGs may be
    8- or 16-bit grey, palette or colour with equal channels, opaque. Anything else is a
    :class:`UserError`.
    """
    path = Path(path)
    if path.is_dir():
        return _load_png_folder(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = load_tensors(path)
        if not tensors:
            raise UserError(f"{path}: holds no tensors")
        return check_images(tensors.get("samples", next(iter(tensors.values()))), str(path))
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError, TokenError, MemoryError) as e:
            # pickled objects, not an .npy file, a damaged header, or one claiming more than memory holds
            raise UserError(f"{path}: not a plain numpy array ({_first_line(e)})") from None
        if not isinstance(array, np.ndarray):  # np.load opens a zip archive (.npz) whatever its name
            array.close()
            raise UserError(f"{path}: an .npz archive of arrays, not one .npy array")
        return check_images(array, str(path))
    if suffix == ".png":
        return _load_grid(path)
    raise UserError(f"{path}: unknown sample format; expected .safetensors, .npy, .png (a grid) or a folder of PNGs")


def _read_grey(path: Path) -> np.ndarray:
    """A PNG as a uint8 ``(H, W)`` array. 16-bit greys are rounded to 8 bits; colour images must
    have equal channels and no transparent pixels. An image over Pillow's pixel limit
    (``Image.MAX_IMAGE_PIXELS``) is refused before it is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format != "PNG":
                    raise UserError(f"{path}: not a PNG file")
                if img.mode == "L":
                    return np.asarray(img, dtype=np.uint8)
                if img.mode.startswith("I"):  # 16-bit grey: I;16, I;16B or I
                    return np.rint(np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8)
                rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)  # (H, W, 4)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: too large an image (over {Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise UserError(f"{path}: cannot read the image ({_first_line(e)})") from None
    if (rgba[..., 3] != 255).any():
        raise UserError(f"{path}: has transparent pixels; samples must be opaque greyscale")
    if not (rgba[..., :3] == rgba[..., :1]).all():
        raise UserError(f"{path}: a colour image; samples must be greyscale")
    return rgba[..., 0]


def _load_png_folder(folder: Path) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise UserError(f"{folder}: no .png files in this folder")
    tiles = []
    for p in files:
        pixels = _read_grey(p)
        if pixels.shape != (TILE, TILE):
            raise UserError(
                f"{p}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but each PNG in a folder must be one 28x28 "
                "image (pass a grid as a single file)"
            )
        tiles.append(pixels)
    return check_images(np.stack(tiles), str(folder))


def grid_scale(height: int, width: int) -> list[int]:
    """Integer upscales s at which a ``height x width`` image is a grid of 28-pixel tiles with
    ``GRID_PADDING``-pixel padding, largest first: each side must be s * (30 k + 2), k >= 1."""
    step = TILE + GRID_PADDING
    return [
        s for s in range(min(height, width) // step, 0, -1)
        if height % s == 0 and width % s == 0
        and (height // s) % step == GRID_PADDING and (width // s) % step == GRID_PADDING
    ]  # fmt: skip


def _load_grid(path: Path) -> torch.Tensor:
    pixels = _read_grey(path)
    h, w = pixels.shape
    step = TILE + GRID_PADDING
    for s in grid_scale(h, w):
        small = pixels[::s, ::s]  # (h/s, w/s)
        # A genuine upscale repeats each pixel s x s times; make_grid pads with black (0).
        if not np.array_equal(np.repeat(np.repeat(small, s, 0), s, 1), pixels):
            continue
        pad_rows = np.arange(small.shape[0]) % step < GRID_PADDING
        pad_cols = np.arange(small.shape[1]) % step < GRID_PADDING
        if small[pad_rows].any() or small[:, pad_cols].any():
            continue
        rows, cols = (small.shape[0] - GRID_PADDING) // step, (small.shape[1] - GRID_PADDING) // step
        corners = [(GRID_PADDING + r * step, GRID_PADDING + c * step) for r in range(rows) for c in range(cols)]
        tiles = [small[y : y + TILE, x : x + TILE] for y, x in corners]  # row-major, as make_grid fills them
        n = len(tiles)
        while n > (rows - 1) * cols and n > 1 and not tiles[n - 1].any():  # empty slots of the last row
            n -= 1
        return check_images(np.stack(tiles[:n]), str(path))
    raise UserError(
        f"{path}: {w}x{h} pixels is not a grid of 28x28 tiles with {GRID_PADDING}-pixel black padding at any "
        f"integer scale (each side must be scale * (30 * tiles + 2))"
    )


# ----------------------------------------------------------------------------- report


_ROWS = [  # (key, label, format)
    ("fid", "FID (lower is better)", "{:.3f}"),
    ("kid_mean", "KID x 1000 (lower is better)", "kid"),
    ("precision", "precision (fidelity)", "{:.3f}"),
    ("recall", "recall (diversity)", "{:.3f}"),
    ("density", "density", "{:.3f}"),
    ("coverage", "coverage", "{:.3f}"),
    ("inception_score", "inception score (max 10)", "{:.3f}"),
    ("mean_confidence", "mean classifier confidence", "{:.3f}"),
    ("confident_share", "share with confidence > 0.9", "{:.3f}"),
    ("label_accuracy", "label accuracy", "{:.3f}"),
    ("class_histogram", "class histogram (0-9)", "hist"),
]


def _format(values: dict[str, Any] | None, key: str, fmt: str) -> str:
    if not values or values.get(key) is None:
        return "-"
    if fmt == "kid":
        return f"{1000 * values['kid_mean']:.3f} +- {1000 * values['kid_std']:.3f}"
    if fmt == "hist":
        return " ".join(str(c) for c in values[key])
    return fmt.format(values[key])


def report_table(result: dict[str, Any]) -> Table:
    """A rich table of :func:`evaluate_images` / :func:`evaluate_run` output: one row per metric,
    the model's value beside the real-data floor."""
    net = result["feature_net"]
    table = Table(
        title=f"Sample quality, N = {result['n']:,} samples vs {result['n_reference']:,} MNIST test images "
        f"(feature net test accuracy {100 * net['accuracy']:.2f}%)"
    )
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column(f"real data (N = {result.get('n_floor', 0):,} train)", justify="right")
    for key, label, fmt in _ROWS:
        if key == "label_accuracy" and key not in result["model"]:
            continue
        table.add_row(label, _format(result["model"], key, fmt), _format(result.get("real"), key, fmt))
    nll = result.get("nll")
    if nll:
        note = "" if nll["estimate"] == "exact" else f", {nll['timesteps_evaluated']} of {nll['timesteps']} terms"
        table.add_row(f"NLL bits/dim ({nll['n_images']:,} test images{note})",
                      f"{nll['bpd']:.3f} +- {nll['bpd_stderr']:.3f}", "-")  # fmt: skip
    s = result.get("sampling")
    if s:  # what was measured: FID depends on the sampler as much as on the weights
        parts = [f"{s['sampler']}", f"{s['steps']} evaluations" if s["sampler"] != "ddpm" else "all T steps"]
        if s.get("spacing") is not None:
            parts.append(f"spacing {s['spacing']:g}")
        if s.get("eta"):
            parts.append(f"eta {s['eta']:g}")
        if s.get("guide"):  # "classifier-free guidance 2" or "autoguidance 2"
            kind = s["guide"] if s["guide"] == "autoguidance" else f"{s['guide']} guidance"
            parts.append(f"{kind} {s['guidance']:g}")
        if s.get("cluster_guidance"):
            parts.append(f"cluster guidance {s['cluster_guidance']:g}")
        if s.get("conditional"):
            parts.append(f"labels {s['labels']}")
        table.caption = f"run {result.get('run', '?')}: " + ", ".join(parts) + f", seed {s['seed']}"
    return table
