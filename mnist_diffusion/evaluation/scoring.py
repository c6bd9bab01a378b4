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
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import SamplingConfig
from ..data.mnist import DEFAULT_DATA_DIR, as_unit, load_mnist
from ..diffusion.nll import DEFAULT_NLL_TIMESTEPS, float64_device, nll_bpd
from ..errors import UserError
from ..io import atomic_write_json
from ..nets.features import FeatureNet
from ..pictures.grids import check_images
from ..runs.loader import LoadedRun, load_run
from ..runs.store import write_manifest
from ..runtime import autocast_dtype, precision_name
from ..sampling.generate import balanced_labels, count_for, generate, resolve_for
from . import metrics
from .features import extract, load_feature_net

EVAL_FILE = "eval.json"
FLOOR_SEED = 0  # fixes which training images form the real-data floor, the same for every evaluation
MIN_SAMPLES = 10  # the k-NN metrics and the 10-split inception score need at least this many


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
        _REFERENCE[key] = extract(net, as_unit(real.test[0]), progress=progress)
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


def fid_of(
    images: torch.Tensor, *, data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR, device: str | torch.device = "cpu"
) -> float:
    """The FID alone of ``images`` ``(N, 1, 28, 28)`` in [0, 1] against the MNIST test set, with the
    feature net and reference features :func:`evaluate_images` uses (and caches): what `train
    --eval-every` logs, without the other metrics' cost (KID alone takes longer than the FID)."""
    images = check_images(images, "images")
    if len(images) < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} images to evaluate, got {len(images)}")
    net, _ = feature_net(device)
    ref_feats, _ = real_reference(data_dir, net)
    feats, _ = extract(net, images)
    return metrics.fid(ref_feats, feats)


def real_floor(
    real: RealData, key: str, net: FeatureNet, n: int, seed: int, kid_subsets: int, with_labels: bool
) -> tuple[dict[str, Any], int]:
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
        feats, probs = extract(net, as_unit(train_x[idx]))
        labels = train_y[idx] if with_labels else None
        _FLOOR[cache_key] = _metrics(ref_feats, feats, probs, labels, seed=seed, kid_subsets=kid_subsets)
    return dict(_FLOOR[cache_key]), n


def evaluate_run(
    run_dir: str | os.PathLike,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    n_samples: int = 10_000,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR,
    nll_images: int = 0,
    nll_timesteps: int | None = DEFAULT_NLL_TIMESTEPS,
    progress: bool = False,
    reference: RealData | None = None,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """Sample ``n_samples`` images from a run with ``sampling``, evaluate them, and write
    ``eval.json`` into the run.

    A class-conditional run samples balanced labels ``i % 10``, a clustered one draws clusters by
    size. With ``nll_images`` > 0, also the NLL bound (bits/dim) of the first that many test images.
    :return: the dict written to ``eval.json``: :func:`evaluate_images`'s result plus the sampling
        settings (resolved for the run: what was really used), the NLL and wall times.
    """
    if n_samples < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} samples to evaluate, got {n_samples}")
    count_for(n_samples, "-n")
    if nll_images < 0:
        raise UserError(f"the NLL needs a positive number of test images, got {nll_images}")
    run_dir = Path(run_dir)
    device = torch.device(device)
    run = load_run(run_dir, device)
    real, _ = _real_data(data_dir, reference)  # fail early if MNIST is missing
    settings = resolve_for(run, sampling)

    start = time.perf_counter()
    labels = balanced_labels(n_samples) if run.conditional else None
    images = generate(run, n_samples, settings, labels=labels, progress=progress)
    sample_seconds = time.perf_counter() - start

    start = time.perf_counter()
    result = evaluate_images(
        images,
        data_dir=data_dir,
        labels=labels,
        seed=settings.seed,
        device=device,
        progress=progress,
        reference=real,
        kid_subsets=kid_subsets,
    )
    metric_seconds = time.perf_counter() - start

    result["nll"] = None
    if nll_images:
        generator = torch.Generator(float64_device(device)).manual_seed(settings.seed)
        result["nll"] = nll_bpd(
            run.model,
            run.schedule,
            real.test[0][:nll_images],
            batch_size=settings.batch_size,
            generator=generator,
            progress=progress,
            timesteps_subsample=nll_timesteps,
        )
    result.update(
        run=run_dir.name,
        sampling=_sampling_record(settings, run, device),
        device=str(device),
        seconds={
            "sampling": round(sample_seconds, 2),
            "metrics": round(metric_seconds, 2),
            "nll": result["nll"]["seconds"] if result["nll"] else None,
        },
        mnist_diffusion_version=__version__,
        torch_version=torch.__version__,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(run_dir / EVAL_FILE, result)
    write_manifest(run_dir)
    return result


def _sampling_record(settings: SamplingConfig, run: LoadedRun, device: torch.device) -> dict[str, Any]:
    """What ``eval.json`` says of how its samples were drawn: the resolved settings, the guidance in
    words, what the network ran in (bf16, fp16 or fp32), and how labels were chosen."""
    return {
        **settings.to_dict(),
        "guidance_text": settings.guidance.describe(),
        "network_precision": precision_name(autocast_dtype(settings.precision, device)),
        "labels": "i % 10" if run.conditional else "drawn from the cluster sizes" if run.clustered else None,
    }
