"""What every evaluation compares against: real MNIST, the feature net, the scores of one set of
features, and the two floors made of real digits.

- The *train-vs-test floor*: N real training images (a fixed seeded subset) against the 10,000 test
  images, the same N as the samples: what a perfect model would score at this N.
- The *test-vs-test floor*: one half of the test set against the other (m images each, m the
  smaller of N and half the test set): how low a metric goes between two sets of real digits drawn
  from exactly one distribution.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..data.mnist import DEFAULT_DATA_DIR, as_unit, load_mnist
from ..errors import UserError
from ..nets.features import FeatureNet
from . import metrics
from .bootstrap import bootstrap_intervals
from .features import extract, load_feature_net

FLOOR_SEED = 0  # fixes which real images form the floors, the same for every evaluation
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
# data set, and the floors per (data set, N, settings).
_NETS: dict[str, tuple[FeatureNet, dict[str, Any]]] = {}
_REAL: dict[str, tuple[RealData, str]] = {}
_REFERENCE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_FLOOR: dict[tuple, tuple[dict[str, Any], dict[str, Any] | None]] = {}


def feature_net(device: str | torch.device = "cpu") -> tuple[FeatureNet, dict[str, Any]]:
    """The shipped feature net on ``device`` and its info, loaded once per process."""
    key = str(device)
    if key not in _NETS:
        _NETS[key] = load_feature_net(device)
    return _NETS[key]


def real_data(data_dir: str | os.PathLike | None, reference: RealData | None) -> tuple[RealData, str]:
    """``reference`` or the MNIST files in ``data_dir`` (cached per folder), and its content key."""
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
    real, key = real_data(data_dir, reference)
    if key not in _REFERENCE:
        _REFERENCE[key] = extract(net, as_unit(real.test[0]), progress=progress)
    return _REFERENCE[key]


def score(
    ref_feats: torch.Tensor,
    feats: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    seed: int,
    kid_subsets: int,
    bootstrap: int = 0,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every metric of one sample set (features ``(N, D)``, probs ``(N, 10)``) against the
    reference, and with ``bootstrap`` resamples their intervals (else None)."""
    kid_mean, kid_std = metrics.kid(ref_feats, feats, num_subsets=kid_subsets, seed=seed)
    is_mean, is_std = metrics.inception_score(probs, splits=min(10, len(probs)))
    manifolds = metrics.manifolds(ref_feats, feats)  # precision, recall, density, coverage in one pass
    values = {
        "fid": metrics.fid(ref_feats, feats),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **manifolds.values(),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "class_histogram": metrics.class_histogram(probs),
        "mean_confidence": metrics.mean_confidence(probs),
        "confident_share": metrics.confident_share(probs, 0.9),
    }
    if labels is not None:
        values["label_accuracy"] = metrics.label_accuracy(probs, labels)
    if not bootstrap:
        return values, None
    intervals = bootstrap_intervals(
        ref_feats, feats, probs, labels, values, manifolds, resamples=bootstrap, seed=seed, kid_subsets=kid_subsets
    )
    return values, intervals


def floor_indices(real: RealData, n: int) -> torch.Tensor:
    """The ``n`` training images of the train-vs-test floor (and of CAS's real classifier): the
    first ``n`` of a permutation seeded with FLOOR_SEED."""
    return torch.randperm(len(real.train[0]), generator=torch.Generator().manual_seed(FLOOR_SEED))[:n]


def real_floor(
    real: RealData,
    net: FeatureNet,
    n: int,
    *,
    seed: int,
    kid_subsets: int,
    with_labels: bool,
    bootstrap: int = 0,
) -> tuple[dict[str, Any], dict[str, Any] | None, int]:
    """The metrics of ``n`` real training images (:func:`floor_indices`) against the reference, and
    their bootstrap intervals; cached per data set and settings. Returns ``(metrics, intervals, n_used)``."""
    train_x, train_y = real.train
    n = min(n, len(train_x))
    if n < MIN_SAMPLES:
        raise UserError(f"the real-data floor needs at least {MIN_SAMPLES} training images, got {n}")
    cache_key = ("train", real.key, n, seed, kid_subsets, with_labels, bootstrap)
    if cache_key not in _FLOOR:
        idx = floor_indices(real, n)
        ref_feats, _ = real_reference(None, net, reference=real)
        feats, probs = extract(net, as_unit(train_x[idx]))
        labels = train_y[idx] if with_labels else None
        _FLOOR[cache_key] = score(
            ref_feats, feats, probs, labels, seed=seed, kid_subsets=kid_subsets, bootstrap=bootstrap
        )
    values, intervals = _FLOOR[cache_key]
    return dict(values), intervals, n


def half_test_floor(
    real: RealData, net: FeatureNet, n: int, *, seed: int, kid_subsets: int, with_labels: bool
) -> dict[str, Any] | None:
    """The metrics of one half of the test set against the other, m = min(n, half the test set)
    images each (a permutation seeded with FLOOR_SEED: its first m as the reference, the next m
    scored); None if m is below MIN_SAMPLES. Cached per data set and settings."""
    test_y = real.test[1]
    m = test_floor_size(n, len(test_y))
    if m < MIN_SAMPLES:
        return None
    cache_key = ("test", real.key, m, seed, kid_subsets, with_labels)
    if cache_key not in _FLOOR:
        feats, probs = real_reference(None, net, reference=real)
        order = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(FLOOR_SEED))
        half_a, half_b = order[:m], order[m : 2 * m]
        labels = test_y[half_b] if with_labels else None
        _FLOOR[cache_key] = score(
            feats[half_a], feats[half_b], probs[half_b], labels, seed=seed, kid_subsets=kid_subsets
        )
    return dict(_FLOOR[cache_key][0])


def test_floor_size(n: int, n_test: int) -> int:
    """m, the images in each half of the test-vs-test floor for N samples and ``n_test`` test images."""
    return min(n, n_test // 2)
