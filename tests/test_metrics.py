"""Numeric checks of mnist_diffusion.metrics against closed forms and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mnist_diffusion.evaluation import metrics


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _frechet_scipy(mu1, s1, mu2, s2) -> float:
    """The classic pytorch-fid formula, with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# Frechet distance / FID
# ----------------------------------------------------------------------------------------------


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    mu, sigma = metrics.gaussian_stats(x)
    assert mu.dtype == sigma.dtype == torch.float64
    assert mu.shape == (7,) and sigma.shape == (7, 7)
    np.testing.assert_allclose(mu.numpy(), x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.astype(np.float64), rowvar=False, ddof=1), rtol=1e-10)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_full_covariances():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute, and d^2 has the diagonal closed form."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a, b = rng.uniform(0.1, 2, 12), rng.uniform(0.1, 2, 12)
    got = metrics.frechet_distance(np.zeros(12), q @ np.diag(a) @ q.T, np.zeros(12), q @ np.diag(b) @ q.T)
    assert got == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)


@pytest.mark.parametrize("d", [3, 32, 128])
def test_frechet_non_commuting_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = _frechet_scipy(mu1, s1, mu2, s2)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_one_dimensional():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for 1-D Gaussians with standard deviations s1, s2.
    got = metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-0.5]), np.array([[9.0]]))
    assert got == pytest.approx(1.5**2 + (2 - 3) ** 2)


def test_frechet_is_symmetric():
    rng = np.random.default_rng(3)
    s1, s2 = _random_spd(rng, 20), _random_spd(rng, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1))


def test_frechet_rank_deficient_is_finite_and_non_negative():
    rng = np.random.default_rng(4)
    # Fewer samples than dimensions: both covariances have rank 19 in 64 dimensions.
    x, y = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.3
    d_xy = metrics.fid(x, y)
    assert math.isfinite(d_xy) and d_xy > 0
    # The same rank-deficient set against itself.
    d_xx = metrics.fid(x, x)
    assert math.isfinite(d_xx) and 0 <= d_xx < 1e-6
    # Covariances with zero rows / columns (constant features), in both arguments.
    s1, s2 = _random_spd(rng, 10), _random_spd(rng, 10)
    s1[:3, :] = s1[:, :3] = 0
    s2[5:, :] = s2[:, 5:] = 0
    for a, b in [(s1, s2), (s2, s1), (s1, s1), (np.zeros((10, 10)), s2)]:
        d = metrics.frechet_distance(np.zeros(10), a, np.zeros(10), b)
        assert math.isfinite(d) and d >= 0
    # An all-zero first covariance: d^2 = Tr(S2) exactly.
    assert metrics.frechet_distance(np.zeros(10), np.zeros((10, 10)), np.zeros(10), s2) == pytest.approx(np.trace(s2))


def test_fid_of_a_set_with_itself_is_zero_and_shift_adds_squared_norm():
    x = torch.randn(500, 64, generator=torch.Generator().manual_seed(5))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.full((64,), 0.5)
    # A pure translation keeps the covariance: FID = ||shift||^2 = 64 * 0.25.
    assert metrics.fid(x, x + shift) == pytest.approx(16.0, rel=1e-6)


def test_fid_matches_torchmetrics_formula():
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    compute_fid = getattr(fid_module, "_compute_fid", None)
    if compute_fid is None:
        pytest.skip("torchmetrics has no _compute_fid")
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(400, 32, generator=g), 1.2 * torch.randn(400, 32, generator=g) + 0.1
    (mu1, s1), (mu2, s2) = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    expected = float(compute_fid(mu1, s1, mu2, s2))
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-8)


def test_fid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        metrics.fid(np.zeros(10), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.fid(np.zeros((10, 3)), np.zeros((10, 2)))


# ----------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------


def _mmd2_double_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / D + 1)^3, written out term by term."""
    m, d = x.shape

    def k(u, v):
        return (float(u @ v) / d + 1) ** 3

    k_xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    k_yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    k_xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return k_xx + k_yy - 2 * k_xy


def test_kid_matches_double_loop_on_tiny_example():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)) + 0.5
    # A subset of the full size is a permutation of the whole set; MMD^2 does not see the order.
    mean, std = metrics.kid(x, y, num_subsets=3, subset_size=6)
    assert mean == pytest.approx(_mmd2_double_loop(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_subset_size_is_clipped_to_the_smaller_set():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((9, 3))
    mean, _ = metrics.kid(x, y, num_subsets=20, subset_size=1000)
    assert math.isfinite(mean)


def test_kid_same_distribution_near_zero_and_shift_positive():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(1000, 32, generator=g), torch.randn(1000, 32, generator=g)
    shifted = torch.randn(1000, 32, generator=g) + 0.3
    same, same_std = metrics.kid(a, b, num_subsets=20, subset_size=500)
    diff, diff_std = metrics.kid(a, shifted, num_subsets=20, subset_size=500)
    assert diff > 10 * abs(same)
    assert diff > 5 * diff_std
    assert same_std >= 0 and diff_std >= 0


def test_kid_is_reproducible_with_generator_or_seed():
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    kw = {"num_subsets": 5, "subset_size": 50}
    assert metrics.kid(a, b, **kw, seed=3) == metrics.kid(a, b, **kw, seed=3)
    assert metrics.kid(a, b, **kw, generator=torch.Generator().manual_seed(3)) == metrics.kid(a, b, **kw, seed=3)
    assert metrics.kid(a, b, **kw, seed=3) != metrics.kid(a, b, **kw, seed=4)


# ----------------------------------------------------------------------------------------------
# Precision / recall, density / coverage
# ----------------------------------------------------------------------------------------------

# 1-D hand example, k = 1. Real X = 0, 1, 3, 6 (k-NN radii 1, 1, 2, 3); fake Y = 0.5, 0.6, 2.5, 20
# (k-NN radii 0.1, 0.1, 1.9, 17.5).
_REAL_1D = np.array([[0.0], [1.0], [3.0], [6.0]])
_FAKE_1D = np.array([[0.5], [0.6], [2.5], [20.0]])


def test_precision_recall_hand_example():
    # precision: 0.5, 0.6, 2.5 lie in a real ball, 20 does not -> 3/4.
    # recall: 1 and 3 lie in the ball of 2.5 (radius 1.9), 6 in that of 20 (radius 17.5), 0 in none -> 3/4.
    pr = metrics.precision_recall(_REAL_1D, _FAKE_1D, k=1)
    assert pr == {"precision": pytest.approx(0.75), "recall": pytest.approx(0.75)}


def test_density_coverage_hand_example():
    # Balls (centre, radius): (0, 1), (1, 1), (3, 2), (6, 3).
    # density: 0.5 in 2 balls, 0.6 in 2, 2.5 in 1, 20 in 0 -> 5 / (k M) = 5 / 4.
    # coverage: the balls of 0, 1 and 3 hold a fake point, that of 6 none (nearest 2.5 at 3.5) -> 3/4.
    dc = metrics.density_coverage(_REAL_1D, _FAKE_1D, k=1)
    assert dc == {"density": pytest.approx(1.25), "coverage": pytest.approx(0.75)}


def test_identical_sets_give_full_precision_recall_and_coverage():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(11))
    assert metrics.precision_recall(x, x, k=3) == {"precision": 1.0, "recall": 1.0}
    assert metrics.density_coverage(x, x, k=5)["coverage"] == 1.0


def test_far_apart_sets_give_zero():
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g) + 100
    assert metrics.precision_recall(x, y) == {"precision": 0.0, "recall": 0.0}
    assert metrics.density_coverage(x, y) == {"density": 0.0, "coverage": 0.0}


def test_tight_cluster_inside_real_set_is_precise_but_not_diverse():
    g = torch.Generator().manual_seed(13)
    real = torch.randn(1000, 8, generator=g)
    fake = 0.05 * torch.randn(1000, 8, generator=g)  # all near the mode of the real set
    pr = metrics.precision_recall(real, fake)
    assert pr["precision"] > 0.95 and pr["recall"] < 0.1
    dc = metrics.density_coverage(real, fake)
    assert dc["density"] > 1.5 and dc["coverage"] < 0.1


def test_same_distribution_density_near_one_coverage_near_expected():
    # Naeem et al. 2020: for equal distributions E[density] = 1 and, with N = M,
    # E[coverage] ~ 1 - 1 / 2^k.
    g = torch.Generator().manual_seed(14)
    x, y = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)
    dc = metrics.density_coverage(x, y, k=5)
    assert dc["density"] == pytest.approx(1.0, abs=0.08)
    assert dc["coverage"] == pytest.approx(1 - 0.5**5, abs=0.03)


def test_chunked_distances_match_single_block(monkeypatch):
    g = torch.Generator().manual_seed(15)
    x, y = torch.randn(120, 6, generator=g), 1.3 * torch.randn(90, 6, generator=g)
    whole = metrics.precision_recall(x, y), metrics.density_coverage(x, y)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 7 * 90)  # blocks of 7 or 5 rows, ragged last block
    assert (metrics.precision_recall(x, y), metrics.density_coverage(x, y)) == whole


@pytest.mark.parametrize("cap", [metrics.COVER_CAP, 1])
def test_manifolds_count_what_precision_recall_density_coverage_say(monkeypatch, cap):
    """One pass, kept per point, gives the same four numbers, also in chunks and with a tiny cap."""
    g = torch.Generator().manual_seed(16)
    x, y = torch.randn(150, 5, generator=g), 1.2 * torch.randn(110, 5, generator=g) + 0.2
    expected = {**metrics.precision_recall(x, y), **metrics.density_coverage(x, y)}
    monkeypatch.setattr(metrics, "COVER_CAP", cap)
    assert metrics.manifolds(x, y).values() == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 7 * 110)
    m = metrics.manifolds(x, y)
    assert m.values() == pytest.approx(expected, abs=1e-12)
    # a resample: the values of the drawn points, duplicates counted in precision and density
    idx = torch.randint(110, (110,), generator=g)
    counts = torch.bincount(idx, minlength=110)
    radii = metrics.manifolds(x, y).values()  # the balls keep the radii of the whole set
    drawn = m.values(counts > 0, counts.double())
    assert drawn["precision"] == pytest.approx(float(m.fake_in_real[idx].double().mean()))
    assert drawn["density"] == pytest.approx(float(m.density_hits[idx].double().mean()) / 5)
    assert drawn["coverage"] <= radii["coverage"] and drawn["recall"] <= radii["recall"]


def test_split_inception_scores_match_the_score():
    probs = torch.softmax(torch.randn(100, 10, generator=torch.Generator().manual_seed(3)), dim=1).double()
    probs[:, 9] = 0  # a class no sample has
    probs /= probs.sum(dim=1, keepdim=True)
    p = probs.numpy()
    expected = []
    for part in np.split(p, 10):  # exp(mean KL(p(y|x) || p(y))), the terms with p(y|x) = 0 left out
        p_y = part.mean(axis=0)
        kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1)) - np.log(np.where(p_y > 0, p_y, 1))), 0)
        expected.append(np.exp(kl.sum(axis=1).mean()))
    np.testing.assert_allclose(metrics.split_inception_scores(probs, 10).numpy(), expected, rtol=1e-12)
    assert metrics.inception_score(probs, splits=10) == pytest.approx((np.mean(expected), np.std(expected)))


def test_k_must_be_below_n():
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


# ----------------------------------------------------------------------------------------------
# Classifier-output summaries
# ----------------------------------------------------------------------------------------------


def test_inception_score_uniform_one_hot_is_ten():
    probs = np.eye(10)[np.arange(100) % 10]  # each split of 10 holds every class once
    mean, std = metrics.inception_score(probs, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_single_class_is_one():
    probs = np.tile(np.eye(10)[3], (50, 1))
    assert metrics.inception_score(probs, splits=5) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))
    # Uniform (uninformative) predictions also give 1: p(y|x) = p(y).
    assert metrics.inception_score(np.full((50, 10), 0.1), splits=5)[0] == pytest.approx(1.0)


def test_inception_score_two_point_closed_form():
    # Half the samples (0.9, 0.1), half (0.1, 0.9): p(y) = (0.5, 0.5), KL = 0.9 ln 1.8 + 0.1 ln 0.2.
    probs = np.array([[0.9, 0.1], [0.1, 0.9]] * 10)
    expected = math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert metrics.inception_score(probs, splits=2)[0] == pytest.approx(expected)


def test_histogram_confidence_and_accuracy_hand_example():
    probs = torch.tensor(
        [
            [0.95, 0.05] + [0.0] * 8,
            [0.10, 0.90] + [0.0] * 8,
            [0.00, 0.20, 0.80] + [0.0] * 7,
            [0.02] * 9 + [0.82],
        ],
        dtype=torch.float64,
    )  # float64 so that the ties with the thresholds below are exact
    assert metrics.class_histogram(probs) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert metrics.mean_confidence(probs) == pytest.approx((0.95 + 0.90 + 0.80 + 0.82) / 4)
    assert metrics.confident_share(probs) == pytest.approx(0.25)  # 0.9 is not > 0.9
    assert metrics.confident_share(probs, threshold=0.8) == pytest.approx(0.75)  # 0.80 is not > 0.8
    assert metrics.label_accuracy(probs, [0, 1, 1, 9]) == pytest.approx(0.75)
    assert metrics.label_accuracy(probs, np.array([0, 1, 2, 9])) == 1.0


def test_results_are_json_serialisable():
    import json

    probs = np.eye(10)[np.arange(40) % 10]
    x = np.random.default_rng(16).standard_normal((40, 5))
    json.dumps(
        {
            "fid": metrics.fid(x, x + 1),
            "kid": metrics.kid(x, x + 1, num_subsets=2, subset_size=10),
            "pr": metrics.precision_recall(x, x + 1),
            "dc": metrics.density_coverage(x, x + 1),
            "is": metrics.inception_score(probs, splits=4),
            "hist": metrics.class_histogram(probs),
            "conf": metrics.mean_confidence(probs),
            "share": metrics.confident_share(probs),
            "acc": metrics.label_accuracy(probs, np.arange(40) % 10),
        }
    )


def test_probabilities_are_validated():
    with pytest.raises(ValueError, match="probability"):
        metrics.class_histogram(np.random.default_rng(17).standard_normal((5, 10)))
