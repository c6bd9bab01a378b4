"""Self-labels for unconditional training: k-means clusters of the training images' pixels.

An unconditional run with ``clusters`` K > 0 learns a K-way "class" embedding, but the classes
are not MNIST's digit labels: they are k-means clusters of the pixels, found without any label.
Sampling draws a cluster from the clusters' training frequencies and guides towards it with
classifier-free guidance. This is self-labeled guidance (Hu et al. 2023, "Self-Guided Diffusion
Models"), with principal components of the pixels as features instead of a self-supervised network.

Everything runs on the CPU in float64, so the same images and seed give the same clusters on
every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError
from ..io import load_tensors, save_tensors
from .mnist import ensure_mnist, load_mnist

CLUSTERS = "clusters.safetensors"  # in a run folder: each training image's cluster, and the clusters' sizes
PCA_DIMS = 50  # features: the images' projections on their first 50 principal components
KMEANS_ITERS = 50  # Lloyd iterations at most (they stop early once no assignment changes)


def pca_features(images: torch.Tensor, dims: int = PCA_DIMS) -> torch.Tensor:
    """The projections of ``images`` [N x H x W] (uint8 or float) on their top ``dims`` principal
    components, as [N x dims] float64: centred pixels in [0, 1] times the leading eigenvectors of
    their covariance."""
    x = images.reshape(len(images), -1).to(torch.float64)
    x = x / 255.0 if images.dtype == torch.uint8 else x
    x = x - x.mean(0)
    cov = x.T @ x / len(x)  # (D, D)
    _, vecs = torch.linalg.eigh(cov)  # eigenvalues in ascending order
    return x @ vecs[:, -dims:].flip(1)  # (N, dims), largest component first


def kmeans(features: torch.Tensor, k: int, seed: int = 0, iters: int = KMEANS_ITERS) -> torch.Tensor:
    """Cluster indices [N] (int64, 0..k-1) of ``features`` [N x D] by k-means: k-means++ seeding
    (Arthur & Vassilvitskii 2007), then Lloyd iterations. A cluster left empty keeps its centre."""
    n = len(features)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= the {n} points (got k = {k})")
    g = torch.Generator().manual_seed(seed)
    # 1. k-means++: each next centre is a point drawn with probability proportional to its
    #    squared distance to the nearest centre so far.
    centres = features[torch.randint(n, (1,), generator=g)]
    nearest = torch.cdist(features, centres).squeeze(1) ** 2  # (N,)
    for _ in range(k - 1):
        new = features[torch.multinomial(nearest / nearest.sum(), 1, generator=g)]
        centres = torch.cat([centres, new])
        nearest = torch.minimum(nearest, torch.cdist(features, new).squeeze(1) ** 2)
    # 2. Lloyd: assign every point to its nearest centre, move each centre to its points' mean.
    assign = torch.cdist(features, centres).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, features)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        new_assign = torch.cdist(features, centres).argmin(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return assign


def pixel_clusters(images: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """The self-labels of ``images`` [N x H x W]: k-means cluster indices [N] (int64) of their
    PCA features."""
    return kmeans(pca_features(images.cpu()), k, seed=seed)


def draw_clusters(counts: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` cluster indices [n] drawn from the clusters' training frequencies ``counts`` [K]
    (on ``counts``' device, which must be the generator's)."""
    return torch.multinomial(counts.float(), n, replacement=True, generator=generator)


def save_clusters(run_dir: Path, assign: torch.Tensor, k: int) -> None:
    """Write ``clusters.safetensors``: ``assign`` [N] (each training image's cluster) and
    ``counts`` [k] (the clusters' sizes, which sampling draws from)."""
    save_tensors(run_dir / CLUSTERS, {"assign": assign.to(torch.int64), "counts": torch.bincount(assign, minlength=k)})


def load_clusters(run_dir: Path, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(assign [N], counts [k])`` from a run's ``clusters.safetensors``, checked against each
    other and against the run's ``k`` clusters; a bad file is a one-line UserError."""
    path = run_dir / CLUSTERS
    tensors = load_tensors(path)
    assign, counts = tensors.get("assign"), tensors.get("counts")
    ok = (
        assign is not None
        and counts is not None
        and assign.dtype == counts.dtype == torch.int64
        and assign.ndim == 1
        and tuple(counts.shape) == (k,)
        and len(assign) > 0
        and int(assign.min()) >= 0
        and int(assign.max()) < k
        and torch.equal(torch.bincount(assign, minlength=k), counts)
    )
    if not ok:
        raise UserError(f"{path} does not hold the {k} clusters of the run's config.json (corrupt?)")
    return assign, counts


MATCH_BANDWIDTH = 0.5  # h of ClusterMatcher's kernel, in pixel values over the known pixels
MATCH_CHUNK = 64  # drawings scored at once: an [N x 64] float64 matrix, 31 MB for MNIST's 60,000 images
IMAGE_CHUNK = 8192  # training images turned to floats at once (the matcher keeps them as they came, uint8)


class ClusterMatcher:
    """p(cluster | the known pixels of a drawing): a kernel (Nadaraya-Watson) estimate over the
    training images, each weighing exp(-d^2 / (2 h^2)), d^2 its squared distance to the drawing on
    the drawing's known pixels, and each voting for its own cluster. What a drawn stroke says about
    the digit it begins: the training digits with ink where the stroke is count, whatever they have
    where the drawing is left to fill.

    :param images: the training images [N x H x W], uint8 (or floats in [0, 1]); ``assign``: their
        clusters [N], 0..k-1 (a run's ``clusters.safetensors``).
    """

    def __init__(self, images: torch.Tensor, assign: torch.Tensor, k: int, bandwidth: float = MATCH_BANDWIDTH):
        if len(images) != len(assign):
            raise UserError(f"{len(assign)} cluster assignments for {len(images)} training images")
        self.images = images.reshape(len(images), -1)  # (N, P), 47 MB for MNIST's training set in uint8
        self.assign, self.k, self.bandwidth = assign.to(torch.int64), k, bandwidth

    @classmethod
    def of_run(cls, run_dir: Path, k: int, data_dir: Path, log: Callable[[str], None] | None = None) -> ClusterMatcher:
        """The matcher of the run in ``run_dir`` (trained on ``k`` clusters): MNIST's training
        images in ``data_dir`` (fetched if missing) and the run's clusters of them."""
        ensure_mnist(data_dir, log=log)
        images, _ = load_mnist(data_dir, "train")
        assign = load_clusters(run_dir, k)[0]
        if len(assign) != len(images):
            raise UserError(
                f"run {run_dir.name} was clustered on {len(assign)} training images, {data_dir} has {len(images)}"
            )
        return cls(images, assign, k)

    def probabilities(self, drawings: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """[B x k] float64, each row summing to 1, for ``drawings`` [B x H x W] (or [B x 1 x H x W])
        in [0, 1] and ``known``, bool like them: True where a pixel counts."""
        m = known.reshape(len(known), -1).to(torch.float32)  # (B, P)
        d = drawings.reshape(len(drawings), -1).to(torch.float32) * m
        rows = []
        for first in range(0, len(d), MATCH_CHUNK):
            mc, dc = m[first : first + MATCH_CHUNK], d[first : first + MATCH_CHUNK]
            dist2 = torch.cat([self._distances(start, mc, dc) for start in range(0, len(self.images), IMAGE_CHUNK)])
            weights = torch.softmax(-dist2 / (2 * self.bandwidth**2), dim=0)  # (N, b), each column sums to 1
            rows.append(torch.zeros(self.k, len(mc), dtype=torch.float64).index_add_(0, self.assign, weights).T)
        return torch.cat(rows)

    def _distances(self, start: int, m: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Squared distances on the known pixels from images start.. (IMAGE_CHUNK of them) to each
        drawing, float64 (n, b): sum_p m_p (x_p - d_p)^2 = x^2 . m - 2 x . (m d) + (m d) . d."""
        x = self.images[start : start + IMAGE_CHUNK].to(torch.float32)
        x = x / 255.0 if self.images.dtype == torch.uint8 else x
        return ((x * x) @ m.T - 2 * x @ d.T + (d * d).sum(1)).clamp_min(0).double()

    def draw(self, drawings: torch.Tensor, known: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` clusters for each drawing, drawn from :meth:`probabilities`: [B n] int64 on the
        generator's device, the n of drawing 0 first."""
        probs = self.probabilities(drawings, known).to(generator.device)
        return torch.multinomial(probs, n, replacement=True, generator=generator).reshape(-1)
