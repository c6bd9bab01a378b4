"""The self-labels of clustered runs: PCA features and k-means against closed forms, and the kernel
estimate of a drawing's cluster against the sum written out."""

from __future__ import annotations

import math

import pytest
import torch

from mnist_diffusion.data.clusters import (
    IMAGE_CHUNK,
    MATCH_BANDWIDTH,
    ClusterMatcher,
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


def matching_reference(images, assign, k, drawing, known, h) -> list[float]:
    """p(cluster | known pixels), the kernel estimate written out: one weight per image, in float64."""
    weights = []
    for x in images.double() / 255:
        d2 = sum((x[i, j].item() - drawing[i, j].item()) ** 2 for i, j in known.nonzero().tolist())
        weights.append(math.exp(-d2 / (2 * h * h)))
    total = sum(weights)
    return [sum(w for w, a in zip(weights, assign.tolist(), strict=True) if a == c) / total for c in range(k)]


def test_matching_clusters_is_the_kernel_estimate():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 5, 5), generator=g, dtype=torch.uint8)
    assign = torch.tensor([0, 1, 2] * 4)
    drawings = torch.rand(3, 5, 5, generator=g)
    known = torch.rand(3, 5, 5, generator=g) < 0.3
    for h in (0.5, 1.0):
        got = ClusterMatcher(images, assign, 3, bandwidth=h).probabilities(drawings, known)
        assert got.shape == (3, 3) and torch.allclose(got.sum(1), torch.ones(3, dtype=torch.float64))
        for b in range(3):
            want = matching_reference(images, assign, 3, drawings[b], known[b], h)
            assert torch.allclose(got[b], torch.tensor(want, dtype=torch.float64), atol=1e-5), (h, b)


def test_matching_over_more_images_than_one_chunk():
    g = torch.Generator().manual_seed(1)
    n = IMAGE_CHUNK + 5  # the last 5 images in a chunk of their own
    images = torch.randint(0, 256, (n, 4, 4), generator=g, dtype=torch.uint8)
    assign = torch.randint(0, 3, (n,), generator=g)
    drawing = torch.rand(1, 4, 4, generator=g)
    known = torch.rand(1, 4, 4, generator=g) < 0.5
    x = images.double() / 255
    w = torch.exp(-((x - drawing.double()) ** 2 * known).sum((1, 2)) / (2 * MATCH_BANDWIDTH**2))  # (n,)
    want = torch.zeros(3, dtype=torch.float64).index_add_(0, assign, w / w.sum())
    torch.testing.assert_close(ClusterMatcher(images, assign, 3).probabilities(drawing, known)[0], want)


def test_a_stroke_picks_the_clusters_with_ink_there_whatever_is_left_to_fill():
    images = torch.zeros(4, 6, 6, dtype=torch.uint8)
    images[:2, 0] = 255  # cluster 0: a bar on the top row
    images[2:, 5] = 255  # cluster 1: a bar on the bottom row
    images[1, 3] = 255  # (anything below the drawn row differs within cluster 0)
    matcher = ClusterMatcher(images, torch.tensor([0, 0, 1, 1]), 2)
    drawing = torch.zeros(1, 6, 6)
    drawing[0, 0, 1:5] = 1.0  # part of the top bar
    known = drawing > 0
    assert matcher.probabilities(drawing, known)[0, 0] > 0.99
    scribbled = drawing.clone()
    scribbled[0, 3:] = torch.rand(3, 6)  # where the drawing is left to fill counts for nothing
    assert torch.equal(matcher.probabilities(scribbled, known), matcher.probabilities(drawing, known))
    drawn = matcher.draw(drawing.expand(2, 6, 6), known.expand(2, 6, 6), 5, torch.Generator().manual_seed(1))
    assert drawn.tolist() == [0] * 10  # n per drawing, the first drawing's first


def test_the_cluster_matcher_wants_a_cluster_per_image():
    with pytest.raises(UserError, match="3 cluster assignments for 4 training images"):
        ClusterMatcher(torch.zeros(4, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0]), 2)
