"""Sample-quality metrics on classifier features and class probabilities.

Pure functions: they take an ``(N, D)`` feature matrix (a classifier's penultimate layer) or an
``(N, C)`` probability matrix (its softmax), as torch tensors or numpy arrays, compute in float64
and return plain Python floats / lists / dicts, so the results go straight into a JSON file.

- Feature-space distances between two sample sets: :func:`fid` (Heusel et al. 2017),
  :func:`kid` (Binkowski et al. 2018), :func:`precision_recall` (Kynkaanniemi et al. 2019),
  :func:`density_coverage` (Naeem et al. 2020); :func:`manifolds` keeps what these two count per
  point, for a bootstrap over the samples.
- Classifier-output summaries of one sample set: :func:`inception_score` (Salimans et al. 2016),
  :func:`class_histogram`, :func:`mean_confidence`, :func:`confident_share`, :func:`label_accuracy`.

Pairwise distances are computed in row chunks of at most ``CHUNK_ELEMENTS`` entries, so two
10,000-sample sets need about 100 MB of working memory, never the full 10,000 x 10,000 matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

CHUNK_ELEMENTS = 2**23  # entries of one (rows, N) float64 distance block: 64 MB


def _as_matrix(x: ArrayLike, name: str, min_rows: int = 1) -> torch.Tensor:
    """``x`` as a float64 ``(N, D)`` tensor on its own device; a clear error for another shape."""
    x = torch.as_tensor(x).detach().to(torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) matrix, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    return x


def _as_probs(probs: ArrayLike) -> torch.Tensor:
    """``probs`` as a float64 ``(N, C)`` tensor whose rows are probability vectors (not logits)."""
    p = _as_matrix(probs, "probs")
    if (p < 0).any() or not torch.allclose(p.sum(dim=1), torch.ones_like(p[:, 0]), atol=1e-3):
        raise ValueError("probs rows must be probability vectors (non-negative, summing to 1), not logits")
    return p


def _same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# ---------------------------------------------------------------------------------------------
# Frechet distance (FID)
# ---------------------------------------------------------------------------------------------


def gaussian_stats(features: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of a feature set.

    :param features: an ``(N, D)`` matrix, N >= 2.
    :return: ``(mu, sigma)``: float64 tensors of shapes ``(D,)`` and ``(D, D)``.
    """
    x = _as_matrix(features, "features", min_rows=2)
    return x.mean(dim=0), torch.cov(x.T, correction=1)


def psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix via ``eigh``, rounding noise (eigenvalues < 0) clamped to 0."""
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp(min=0).sqrt()) @ v.T  # V diag(sqrt w) V^T, (D, D)


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, *, sqrt_sigma1: torch.Tensor | None = None
) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

    :param mu1, mu2: ``(D,)`` means. :param sigma1, sigma2: ``(D, D)`` PSD covariances, possibly
        rank-deficient (fewer samples than dimensions, constant features).
    :param sqrt_sigma1: sigma1's symmetric square root, when it is already known (many distances to
        one reference, as in a bootstrap).
    :return: d^2 >= 0 as a float; never NaN for PSD inputs.
    """
    mu1, mu2 = (torch.as_tensor(m).to(torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s).to(torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"shape mismatch: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; sigma {tuple(s1.shape)}, {tuple(s2.shape)}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    # Tr((S1 S2)^{1/2}) is the sum of the square roots of the eigenvalues of S1 S2. That product is
    # not symmetric, so a general sqrtm / eigvals on it can return complex values or NaN when S1, S2
    # are singular (N < D, constant features). But S1 S2 = R (R S2) with R = S1^{1/2}, and AB, BA
    # share their non-zero eigenvalues, so they equal those of M = R S2 R: a symmetric PSD matrix,
    # whose eigenvalues `eigvalsh` returns real; those below 0 are rounding noise and clamp to 0.
    r = psd_sqrt(s1) if sqrt_sigma1 is None else torch.as_tensor(sqrt_sigma1).to(torch.float64)
    m = r @ s2 @ r
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return max(float(d2), 0.0)  # the exact value is >= 0; rounding can dip just below


def fid(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two ``(N, D)`` feature sets (Heusel et al. 2017)."""
    a, b = _as_matrix(feats_a, "feats_a", 2), _as_matrix(feats_b, "feats_b", 2)
    _same_dim(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ---------------------------------------------------------------------------------------------
# Kernel inception distance (KID)
# ---------------------------------------------------------------------------------------------


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / D + 1)^3 for all pairs: ``(m, D), (n, D) -> (m, n)``."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two ``(m, D)`` samples (Gretton et al. 2012, eq. 3), the diagonals dropped."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.mean()


def kid(
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel
    k(x, y) = (x.y / D + 1)^3, averaged over random subsets.

    Each subset draws ``subset_size`` rows of each set without replacement (clipped to the smaller
    set's N); subsets are drawn independently of each other.

    :param feats_a, feats_b: ``(N_a, D)`` and ``(N_b, D)`` feature matrices, N >= 2.
    :param generator: a CPU ``torch.Generator`` for the subset draws; if None, one seeded with ``seed``,
        so the value is reproducible by default.
    :return: ``(mean, std)`` of MMD^2 over the subsets (population std, as in torch-fidelity).
        The mean can be slightly negative when the two distributions are equal.
    """
    a, b = _as_matrix(feats_a, "feats_a", 2), _as_matrix(feats_b, "feats_b", 2)
    _same_dim(a, b)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    m = min(subset_size, a.shape[0], b.shape[0])
    mmd2 = torch.empty(num_subsets, dtype=torch.float64)
    for i in range(num_subsets):
        idx_a = torch.randperm(a.shape[0], generator=generator)[:m].to(a.device)
        idx_b = torch.randperm(b.shape[0], generator=generator)[:m].to(b.device)
        mmd2[i] = _mmd2_unbiased(a[idx_a], b[idx_b])
    return float(mmd2.mean()), float(mmd2.std(correction=0))


# ---------------------------------------------------------------------------------------------
# k-NN manifold metrics: precision / recall, density / coverage
# ---------------------------------------------------------------------------------------------


def _row_step(n_cols: int) -> int:
    """Rows per chunk so that a ``(rows, n_cols)`` block stays within ``CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // n_cols)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``(N, D)`` x to its k-th nearest other row: ``(N,)``."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    radii = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _row_step(n)
    for s in range(0, n, step):
        d = torch.cdist(x[s : s + step], x)  # (c, N); the point itself is among them at distance 0
        radii[s : s + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of closed balls around its points, of radius the distance to
    the point's k-th nearest neighbour in the same set. Precision is the share of fake points inside
    the real manifold (fidelity); recall, the share of real points inside the fake manifold (diversity).

    :param real, fake: ``(N, D)`` and ``(M, D)`` feature matrices, both with more than k rows.
    :return: ``{"precision": p, "recall": r}``, each in [0, 1].
    """
    x, y = _as_matrix(real, "real"), _as_matrix(fake, "fake")
    _same_dim(x, y)
    r_real, r_fake = _knn_radii(x, k), _knn_radii(y, k)
    fake_in_real = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    real_in_fake = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    step = _row_step(y.shape[0])
    for s in range(0, x.shape[0], step):
        d = torch.cdist(x[s : s + step], y)  # (c, M): real rows s.., all fake points
        fake_in_real |= (d <= r_real[s : s + step, None]).any(dim=0)
        real_in_fake[s : s + step] = (d <= r_fake[None, :]).any(dim=1)
    return {"precision": float(fake_in_real.double().mean()), "recall": float(real_in_fake.double().mean())}


def density_coverage(real: ArrayLike, fake: ArrayLike, *, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3 and 4), balls around real points only.

        density  = 1 / (k M) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
        coverage = 1 / N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]

    with X the N real points, Y the M fake points and NND_k the k-th nearest-neighbour distance
    within the real set. Balls are open (strict ``<``), as in the authors' ``prdc`` code.

    :param real, fake: ``(N, D)`` and ``(M, D)`` feature matrices, real with more than k rows.
    :return: ``{"density": d, "coverage": c}``; density is about 1 when fake matches real and is
        unbounded above; coverage is in [0, 1].
    """
    x, y = _as_matrix(real, "real"), _as_matrix(fake, "fake")
    _same_dim(x, y)
    r_real = _knn_radii(x, k)
    hits = torch.zeros((), dtype=torch.float64, device=x.device)  # sum over (i, j) of the indicator
    covered = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    step = _row_step(y.shape[0])
    for s in range(0, x.shape[0], step):
        inside = torch.cdist(x[s : s + step], y) < r_real[s : s + step, None]  # (c, M)
        hits += inside.sum()
        covered[s : s + step] = inside.any(dim=1)
    return {"density": float(hits / (k * y.shape[0])), "coverage": float(covered.double().mean())}


COVER_CAP = 32  # a point inside more balls than this counts as always covered in a resample


@dataclass(frozen=True)
class Manifolds:
    """Who lies in whose k-NN ball, per sample, from one pass over the real x fake distances: what
    :func:`precision_recall` and :func:`density_coverage` reduce to a number, kept per point so a
    bootstrap over the fake samples can recount them without new distances.

    ``recall_pairs`` and ``coverage_pairs`` hold ``(2, P)`` (real row, fake column) index pairs: fake
    j's ball (radius from the fake set, k_pr = 3) holds real i, and real i's ball (k_dc = 5, open)
    holds fake j. Only rows inside at most COVER_CAP balls are listed; the rest are in ``*_always``.
    """

    fake_in_real: torch.Tensor  # (M,) bool: fake j inside some real ball (k = 3): precision
    density_hits: torch.Tensor  # (M,) int64: real balls (k = 5) holding fake j: density
    recall_pairs: torch.Tensor  # (2, P) int64
    recall_always: torch.Tensor  # (N,) bool
    coverage_pairs: torch.Tensor  # (2, Q) int64
    coverage_always: torch.Tensor  # (N,) bool
    k_density: int

    def values(self, present: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> dict[str, float]:
        """Precision, recall, density and coverage of the fake samples: all of them, or a resample
        given by ``present`` ((M,) bool: drawn at least once) and ``weights`` ((M,) draw counts)."""
        m = len(self.fake_in_real)
        if present is None:
            present, weights = torch.ones(m, dtype=torch.bool), torch.ones(m, dtype=torch.float64)
        total = float(weights.sum())
        return {
            "precision": float((weights * self.fake_in_real).sum()) / total,
            "recall": _covered_share(self.recall_pairs, self.recall_always, present),
            "density": float((weights * self.density_hits).sum()) / (self.k_density * total),
            "coverage": _covered_share(self.coverage_pairs, self.coverage_always, present),
        }


def _covered_share(pairs: torch.Tensor, always: torch.Tensor, present: torch.Tensor) -> float:
    covered = always.clone()
    covered[pairs[0][present[pairs[1]]]] = True
    return float(covered.double().mean())


def _pairs(mask: torch.Tensor, row0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column) pairs of a ``(c, M)`` bool block whose rows hold 1..COVER_CAP trues, and the
    ``(c,)`` rows with more."""
    counts = mask.sum(dim=1)
    listed = (counts > 0) & (counts <= COVER_CAP)
    pairs = (mask & listed[:, None]).nonzero().T  # (2, P)
    pairs[0] += row0
    return pairs, counts > COVER_CAP


def manifolds(real: ArrayLike, fake: ArrayLike, *, k_pr: int = 3, k_dc: int = 5) -> Manifolds:
    """:class:`Manifolds` of ``(N, D)`` real and ``(M, D)`` fake features; its ``values()`` equal
    :func:`precision_recall` (k = k_pr) and :func:`density_coverage` (k = k_dc) of the same sets."""
    x, y = _as_matrix(real, "real"), _as_matrix(fake, "fake")
    _same_dim(x, y)
    r_real_pr, r_real_dc, r_fake = _knn_radii(x, k_pr), _knn_radii(x, k_dc), _knn_radii(y, k_pr)
    fake_in_real = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    density_hits = torch.zeros(y.shape[0], dtype=torch.int64, device=y.device)
    recall, coverage = [], []
    step = _row_step(y.shape[0])
    for s in range(0, x.shape[0], step):
        d = torch.cdist(x[s : s + step], y)  # (c, M): real rows s.., all fake points
        fake_in_real |= (d <= r_real_pr[s : s + step, None]).any(dim=0)
        inside = d < r_real_dc[s : s + step, None]  # (c, M) open balls around real points
        density_hits += inside.sum(dim=0)
        recall.append(_pairs(d <= r_fake[None, :], s))
        coverage.append(_pairs(inside, s))
    cpu = [t.cpu() for t in (fake_in_real, density_hits)]
    return Manifolds(
        fake_in_real=cpu[0],
        density_hits=cpu[1],
        recall_pairs=torch.cat([p for p, _ in recall], dim=1).cpu(),
        recall_always=torch.cat([a for _, a in recall]).cpu(),
        coverage_pairs=torch.cat([p for p, _ in coverage], dim=1).cpu(),
        coverage_always=torch.cat([a for _, a in coverage]).cpu(),
        k_density=k_dc,
    )


# ---------------------------------------------------------------------------------------------
# Classifier-output summaries
# ---------------------------------------------------------------------------------------------


def inception_score(probs: ArrayLike, *, splits: int = 10) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016) with the MNIST classifier: exp(E_x KL(p(y|x) || p(y))).

    p(y) is the mean of p(y|x) within each of ``splits`` near-equal consecutive splits.

    :param probs: ``(N, C)`` class probabilities, N >= splits.
    :return: ``(mean, std)`` over the splits (population std, as in the original code); the score
        lies in [1, C].
    """
    p = _as_probs(probs)
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in [1, N] = [1, {p.shape[0]}], got {splits}")
    s = split_inception_scores(p, splits)
    return float(s.mean()), float(s.std(correction=0))


def split_inception_scores(p: torch.Tensor, splits: int) -> torch.Tensor:
    """The ``(splits,)`` inception scores of :func:`inception_score`, of float64 ``(N, C)``
    probabilities already checked (no validation: the inner loop of a bootstrap)."""
    xlogx = torch.special.xlogy(p, p).sum(dim=1)  # (N,), 0 log 0 = 0
    n, c = p.shape
    if n % splits == 0:  # equal splits: all at once
        parts = p.reshape(splits, n // splits, c)  # (S, N/S, C)
        p_y = parts.mean(dim=1, keepdim=True)  # (S, 1, C) marginals
        kl = xlogx.reshape(splits, -1) - (parts * torch.where(p_y > 0, p_y.log(), 0.0)).sum(dim=2)  # (S, N/S)
        return kl.mean(dim=1).exp()
    scores = []
    for part, own in zip(torch.tensor_split(p, splits), torch.tensor_split(xlogx, splits), strict=True):
        p_y = part.mean(dim=0)  # (C,) marginal
        log_p_y = torch.where(p_y > 0, p_y.log(), 0.0)  # a class no sample has: its terms are 0 log 0 = 0
        kl = own - part @ log_p_y  # (n,) KL(p(y|x) || p(y))
        scores.append(kl.mean().exp())
    return torch.stack(scores)


def class_histogram(probs: ArrayLike) -> list[int]:
    """Number of samples whose most likely class is c, for each class c: a list of length C."""
    p = _as_probs(probs)
    return torch.bincount(p.argmax(dim=1), minlength=p.shape[1]).tolist()


def mean_confidence(probs: ArrayLike) -> float:
    """Mean over samples of the largest class probability."""
    return float(_as_probs(probs).max(dim=1).values.mean())


def confident_share(probs: ArrayLike, threshold: float = 0.9) -> float:
    """Share of samples whose largest class probability exceeds ``threshold`` (strictly)."""
    return float((_as_probs(probs).max(dim=1).values > threshold).double().mean())


def label_accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Share of samples whose most likely class equals its label (e.g. the class asked of a
    class-conditional sampler). :param labels: ``(N,)`` integer class indices."""
    p = _as_probs(probs)
    y = torch.as_tensor(labels, device=p.device).long()
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},), got {tuple(y.shape)}")
    return float((p.argmax(dim=1) == y).double().mean())
