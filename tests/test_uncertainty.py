"""Intervals of eval's metrics (mnist_diffusion.evaluation.uncertainty, .bootstrap): quantiles and
differences against scipy and hand-worked numbers, and the coverage of the intervals measured on
synthetic Gaussian features, where two sample sets from one distribution differ only by chance."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mnist_diffusion.evaluation import metrics
from mnist_diffusion.evaluation.bootstrap import bootstrap_intervals
from mnist_diffusion.evaluation.uncertainty import (
    binomial,
    difference,
    normal_interval,
    over_repeats,
    pooled,
    t_quantile,
    z_quantile,
)

# ----------------------------------------------------------------------------- against known answers


@pytest.mark.parametrize("dof", [1, 2, 4, 9, 29.5, 200])
def test_t_quantile_matches_scipy(dof):
    assert t_quantile(0.95, dof) == pytest.approx(stats.t.ppf(0.975, dof), rel=1e-5)
    assert t_quantile(0.9, dof) == pytest.approx(stats.t.ppf(0.95, dof), rel=1e-5)


def test_z_quantile_and_bad_levels():
    assert z_quantile() == pytest.approx(1.959964, abs=1e-6)
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match="level"):
            z_quantile(bad)
    with pytest.raises(ValueError, match="degrees"):
        t_quantile(0.95, 0)


def test_over_repeats_by_hand():
    out = over_repeats([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.3027
    assert out["se"] == pytest.approx(1 / math.sqrt(3))
    assert out["low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert out["high"] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert out["values"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="at least 2"):
        over_repeats([1.0])


def test_difference_normal_by_hand():
    """0.317 (se 0.004) against 0.303 (se 0.003): B - A = 0.014, se 0.005, 0.014 +- 1.96 x 0.005."""
    out = difference({"value": 0.303, "se": 0.003}, {"value": 0.317, "se": 0.004})
    assert out["diff"] == pytest.approx(0.014) and out["se"] == pytest.approx(0.005)
    assert out["low"] == pytest.approx(0.014 - 1.959964 * 0.005) and out["high"] == pytest.approx(
        0.014 + 0.0098, abs=1e-6
    )


def test_difference_welch_matches_scipy():
    a_values, b_values = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    a = {"value": 2.0, **over_repeats(a_values)}
    b = {"value": 6.0, **over_repeats(b_values)}
    out = difference(a, b)  # dof = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50 / 17
    reference = stats.ttest_ind(b_values, a_values, equal_var=False).confidence_interval(0.95)
    assert out["diff"] == 4.0 and out["se"] == pytest.approx(math.sqrt(5 / 3))
    assert (out["low"], out["high"]) == pytest.approx((reference.low, reference.high), rel=1e-5)


def test_pooled_by_hand():
    """Three seeds of one recipe: mean 0.314, sd between them 0.012, se sqrt(0.012^2 / 3)."""
    out = pooled([0.302, 0.326, 0.314], [0.004, 0.004, 0.004])
    assert out["value"] == pytest.approx(0.314) and out["between_seed_sd"] == pytest.approx(0.012)
    assert out["se"] == pytest.approx(math.sqrt(0.012**2 / 3))
    agree = pooled([1.0, 1.0], [0.1, 0.3])  # no spread seen: the sampling noise, mean se^2 / k, is the floor
    assert agree["se"] == pytest.approx(math.sqrt((0.01 + 0.09) / 2 / 2)) and agree["between_seed_sd"] == 0
    assert pooled([0.3], [0.01]) == {"value": 0.3, "se": 0.01, "between_seed_sd": None}
    with pytest.raises(ValueError, match="one se per value"):
        pooled([0.3, 0.4], [0.01])


def test_binomial_wilson_by_hand():
    out = binomial(90, 100)  # Wilson's 95% interval for 90 of 100: [0.8256, 0.9448]
    assert out["accuracy"] == 0.9 and out["n"] == 100 and out["se"] == pytest.approx(0.03)
    assert out["low"] == pytest.approx(0.8256, abs=1e-4) and out["high"] == pytest.approx(0.9448, abs=1e-4)
    assert binomial(0, 10)["low"] == pytest.approx(0, abs=1e-12) and binomial(10, 10)["high"] == pytest.approx(1)
    with pytest.raises(ValueError):
        binomial(11, 10)


def test_normal_interval():
    assert normal_interval(1.0, 0.5) == {
        "se": 0.5,
        "low": 1 - 0.5 * z_quantile(),
        "high": 1 + 0.5 * z_quantile(),
        "values": None,
    }


# ----------------------------------------------------------------------------- coverage on synthetic features
#
# The "model" draws D-dim Gaussian features N(0.3, 1.1^2) against a fixed N(0, 1) reference: FID is
# well above 0, as a trained model's is. Two runs from the same distribution, seeds apart: the 95%
# interval of their difference should hold 0 in about 95% of trials (binomial sd at 300 trials: 1.3%).

D, REF = 4, torch.randn(500, 4, generator=torch.Generator().manual_seed(99))


def gaussian_set(seed: int, n: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, D)`` features and ``(n, 10)`` class probabilities made from them."""
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 1.1 + 0.3 + shift
    return x, (2 * torch.cat([x, torch.zeros(n, 10 - D)], dim=1)).softmax(dim=1)


def fid_estimate(seeds: list[int], n: int, shift: float = 0.0) -> dict:
    """The FID of ``len(seeds)`` repeated sets as eval reports it: their mean and t-interval."""
    values = [metrics.fid(REF, gaussian_set(s, n, shift)[0]) for s in seeds]
    return {"value": sum(values) / len(values), **over_repeats(values)}


def bootstrap_estimates(seed: int, n: int, shift: float = 0.0, resamples: int = 40) -> dict[str, dict]:
    """Every bootstrapped metric of one synthetic set, as ``{"value", "se"}``."""
    x, probs = gaussian_set(seed, n, shift)
    labels = torch.arange(n) % 10
    kid_mean, kid_std = metrics.kid(REF, x, num_subsets=5, subset_size=100, seed=seed)
    manifolds = metrics.manifolds(REF, x)
    values = {
        "fid": metrics.fid(REF, x),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **manifolds.values(),
        "inception_score": metrics.inception_score(probs)[0],
        "mean_confidence": metrics.mean_confidence(probs),
        "confident_share": metrics.confident_share(probs),
        "label_accuracy": metrics.label_accuracy(probs, labels),
    }
    out = bootstrap_intervals(REF, x, probs, labels, values, manifolds, resamples=resamples, seed=seed, kid_subsets=5)
    return {key: {"value": values[key], **iv} for key, iv in out.items()}


def contains_zero(a: dict, b: dict) -> bool:
    d = difference(a, b)
    return d["low"] <= 0 <= d["high"]


def test_repeats_interval_covers_a_null_difference_95_percent():
    trials = 300
    hits = sum(
        contains_zero(
            fid_estimate([10 * t, 10 * t + 1, 10 * t + 2], 200), fid_estimate([10 * t + 5, 10 * t + 6, 10 * t + 7], 200)
        )
        for t in range(trials)
    )
    print(
        f"repeats (K = 3, Welch): a null FID difference's 95% interval held 0 in {hits / trials:.3f} of {trials} trials"
    )
    assert 0.90 <= hits / trials <= 0.99


# the metrics whose bootstrap coverage the test asserts; recall, coverage and KID are reported only (see docs)
ASSERTED = ("fid", "precision", "density", "inception_score", "mean_confidence", "confident_share", "label_accuracy")


def test_bootstrap_interval_covers_a_null_difference_95_percent():
    trials = 200
    hits: dict[str, int] = {}
    for t in range(trials):
        a, b = bootstrap_estimates(2 * t, 100), bootstrap_estimates(2 * t + 1, 100)
        for key in a:
            hits[key] = hits.get(key, 0) + contains_zero(a[key], b[key])
    shares = {key: hits[key] / trials for key in hits}
    print(f"bootstrap (B = 40): share of {trials} null differences whose 95% interval held 0: {shares}")
    for key in ASSERTED:
        assert 0.90 <= shares[key] <= 0.99, (key, shares[key])


def test_a_known_shift_is_detected():
    """Features shifted by half a standard deviation: every interval of the FID difference lies above 0."""
    for t in range(5):
        same, shifted = (
            fid_estimate([100 + t, 200 + t, 300 + t], 500),
            fid_estimate([400 + t, 500 + t, 600 + t], 500, 0.5),
        )
        assert difference(same, shifted)["low"] > 0
        a, b = bootstrap_estimates(700 + t, 500), bootstrap_estimates(800 + t, 500, shift=0.5)
        assert difference(a["fid"], b["fid"])["low"] > 0
