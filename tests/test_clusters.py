"""The self-labels of clustered runs: PCA features and k-means against closed forms."""

from __future__ import annotations

import pytest
import torch

from mnist_diffusion.data.clusters import (
    draw_clusters,
    kmeans,
    load_clusters,
    pca_features,
    pixel_clusters,
    save_clusters,
)
from mnist_diffusion.errors import UserError


def blobs(k: int, per: int, dim: int = 5, spread: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` tight Gaussian blobs of ``per`` points each around well-separated centres, and each point's blob."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(k, dim, dtype=torch.float64)
    truth = torch.arange(k).repeat_interleave(per)
    points = centres[truth] + spread * torch.randn(k * per, dim, generator=g, dtype=torch.float64)
    return points, truth


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if the labelings ``a`` and ``b`` agree up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_finds_separated_blobs_and_the_means():
    points, truth = blobs(k=5, per=40)
    assign = kmeans(points, 5, seed=3)
    assert same_partition(assign, truth)
    assert torch.equal(torch.bincount(assign), torch.full((5,), 40))


def test_kmeans_is_deterministic_per_seed_and_checks_k():
    points, _ = blobs(k=4, per=30, spread=3.0)  # overlapping: the answer depends on the seeding
    assert torch.equal(kmeans(points, 6, seed=1), kmeans(points, 6, seed=1))
    with pytest.raises(ValueError, match="k-means needs"):
        kmeans(points, len(points) + 1)


def test_pca_features_match_the_svd():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 6, 6), generator=g, dtype=torch.uint8)
    feats = pca_features(images, dims=4)
    x = images.reshape(200, -1).double() / 255
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # independent reference: principal axes
    ref = x @ vh[:4].T
    signs = torch.sign((feats * ref).sum(0))  # each axis is defined up to its sign
    torch.testing.assert_close(feats * signs, ref)
    torch.testing.assert_close(feats.var(0, correction=0), s[:4] ** 2 / 200)


def test_pixel_clusters_separate_two_kinds_of_image():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(60, 28, 28, dtype=torch.uint8)
    images[:30, :, :14] = 255  # left half lit
    images[30:, :, 14:] = 255  # right half lit
    images = (images.int() + torch.randint(0, 20, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    assert same_partition(pixel_clusters(images, 2), torch.arange(60) // 30)


def test_draw_clusters_follows_the_counts():
    counts = torch.tensor([0, 1, 3])
    drawn = draw_clusters(counts, 4000, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=3) / 4000
    assert freq[0] == 0 and abs(freq[2].item() - 0.75) < 0.03
    assert torch.equal(drawn, draw_clusters(counts, 4000, torch.Generator().manual_seed(0)))


def test_clusters_file_round_trip_and_checks(tmp_path):
    assign = torch.tensor([0, 2, 2, 1, 0])
    save_clusters(tmp_path, assign, 3)
    got, counts = load_clusters(tmp_path, 3)
    assert torch.equal(got, assign) and counts.tolist() == [2, 1, 2]
    with pytest.raises(UserError, match="does not hold the 4 clusters"):
        load_clusters(tmp_path, 4)
    (tmp_path / "clusters.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_clusters(tmp_path, 3)
