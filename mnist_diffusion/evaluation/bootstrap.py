"""Every metric of one sample set with its standard error, from a bootstrap over the samples.

The samples are drawn again with replacement B times (a seeded generator); the reference features
stay fixed, since every run is scored against the same 10,000 test digits and only the samples
vary between two evaluations. Each resample is cheap because nothing is computed on images again:

- FID: the mean and covariance of the resampled features against the reference's (its square root
  computed once).
- Precision, recall, density, coverage: recounted from who lies in whose k-NN ball
  (:class:`~.metrics.Manifolds`, one pass over the distances); the balls keep the radii of the
  whole sample set, so a resample's duplicates do not shrink them.
- Inception score, mean confidence, confident share, label accuracy: the resampled probabilities.
- KID is not resampled (each resample would cost as much as the KID itself): its se is the
  first-order (delta-method) term of its U-statistic, 2 sd(h(y)) / sqrt(N) with h(y) the mean kernel
  of sample y against other samples minus that against the reference, plus the spread over its
  random subsets, kid_std / sqrt(subsets).

The interval is value +- z se with se the standard deviation of the B resampled values (a normal
bootstrap interval: FID's bootstrap distribution is shifted up by its 1/N bias, so its percentiles
would be too).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import metrics
from .uncertainty import BOOTSTRAP_RESAMPLES, INTERVAL_METRICS, LEVEL, normal_interval

KID_PARTNERS = 1000  # samples and reference images each sample's KID term h(y) is averaged over


def bootstrap_intervals(
    ref_feats: torch.Tensor,
    feats: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor | None,
    values: dict[str, Any],
    manifolds: metrics.Manifolds,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    kid_subsets: int = 100,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """``{metric: {"se", "low", "high", "values": None}}`` for each metric of ``values`` (the sample
    set's own metrics, the centre of each interval) but the class histogram and the two spreads.

    :param ref_feats: ``(R, D)`` reference features; :param feats, probs: ``(N, D)``, ``(N, 10)`` of
        the samples; :param labels: ``(N,)`` asked-for classes or None.
    :param seed: seeds the resample draws (and the KID partners).
    """
    if resamples < 2:
        raise ValueError(f"a bootstrap needs at least 2 resamples, got {resamples}")
    n = len(feats)
    generator = torch.Generator().manual_seed(seed)
    feats, probs = feats.double(), probs.double()
    mu_ref, sigma_ref = metrics.gaussian_stats(ref_feats)
    sqrt_ref = metrics.psd_sqrt((sigma_ref + sigma_ref.T) / 2)
    confidence = probs.max(dim=1).values  # (N,)
    correct = None if labels is None else (probs.argmax(dim=1) == labels).double()
    drawn: dict[str, list[float]] = {key: [] for key in _RESAMPLED if key in values}
    for _ in range(resamples):
        idx = torch.randint(n, (n,), generator=generator)  # (N,) drawn with replacement
        counts = torch.bincount(idx, minlength=n)
        sample = feats[idx]
        mu, sigma = sample.mean(dim=0), torch.cov(sample.T)
        drawn["fid"].append(metrics.frechet_distance(mu_ref, sigma_ref, mu, sigma, sqrt_sigma1=sqrt_ref))
        for key, value in manifolds.values(counts > 0, counts.double()).items():
            drawn[key].append(value)
        drawn["inception_score"].append(float(metrics.split_inception_scores(probs[idx], min(10, n)).mean()))
        drawn["mean_confidence"].append(float(confidence[idx].mean()))
        drawn["confident_share"].append(float((confidence[idx] > 0.9).double().mean()))
        if correct is not None:
            drawn["label_accuracy"].append(float(correct[idx].mean()))
    out = {key: normal_interval(values[key], _sd(v), level) for key, v in drawn.items()}
    out["kid_mean"] = normal_interval(values["kid_mean"], kid_se(ref_feats, feats, values, kid_subsets, seed), level)
    return out


_RESAMPLED = tuple(key for key in INTERVAL_METRICS if key != "kid_mean")  # KID: its subsets give its se


def _sd(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def kid_se(ref_feats: torch.Tensor, feats: torch.Tensor, values: dict[str, Any], subsets: int, seed: int) -> float:
    """KID's standard error over sample sets: 2 sd(h) / sqrt(N), h(y_j) = mean_j' k(y_j, y_j') -
    mean_i k(x_i, y_j) over KID_PARTNERS random other samples j' and reference images i (the
    first-order projection of the unbiased MMD^2 on the samples), plus the spread of its random
    subsets, in quadrature."""
    x, y = ref_feats.double(), feats.double()
    generator = torch.Generator().manual_seed(seed)
    ref_part = x[torch.randperm(len(x), generator=generator)[:KID_PARTNERS]]
    partners = torch.randperm(len(y), generator=generator)[: KID_PARTNERS + 1]
    h = torch.empty(len(y), dtype=torch.float64)
    step = max(1, metrics.CHUNK_ELEMENTS // (2 * KID_PARTNERS + 1))
    for s in range(0, len(y), step):
        rows = torch.arange(s, min(s + step, len(y)))
        k_yy = (y[rows] @ y[partners].T / y.shape[1] + 1) ** 3  # (c, P) cubic kernel, as metrics.kid
        k_yy[rows[:, None] == partners[None, :]] = float("nan")  # a sample is not its own partner
        k_xy = (y[rows] @ ref_part.T / y.shape[1] + 1) ** 3  # (c, R)
        h[rows] = k_yy.nanmean(dim=1) - k_xy.mean(dim=1)
    return math.sqrt(4 * float(h.var()) / len(y) + float(values["kid_std"]) ** 2 / subsets)
