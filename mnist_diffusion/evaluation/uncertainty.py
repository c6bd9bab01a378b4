"""How sure a metric is: intervals over repeated sample sets, differences between runs, replicates
pooled, and binomial intervals for accuracies.

Every function takes and returns plain floats and dicts, so its results go straight into
``eval.json``. An estimate is a dict ``{"value", "se"}`` (optionally ``"values"``: the per-repeat
values it is the mean of); an interval is ``{"se", "low", "high"}`` at ``level`` (95% by default).

- :func:`over_repeats`: K independent sample sets, the mean and a t-interval with K - 1 degrees of
  freedom.
- :func:`normal_interval`: a value and its standard error (from a bootstrap, say), value +- z se.
- :func:`difference`: B minus A for two independent estimates, normal or Welch's t.
- :func:`pooled`: runs that differ only in their training seed, as one estimate whose standard error
  counts the spread between seeds.
- :func:`binomial`: an accuracy of n independent trials, with Wilson's score interval.

The quantiles of the normal and Student's t distributions are computed here (the standard library
has the normal one; the t one is found by Newton's method on its CDF), so nothing beyond numpy and
the standard library is needed.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LEVEL = 0.95  # the confidence level of every interval
INTERVAL_METRICS = (  # the metrics of eval that carry an interval, in the table's order
    "fid",
    "kid_mean",
    "precision",
    "recall",
    "density",
    "coverage",
    "inception_score",
    "mean_confidence",
    "confident_share",
    "label_accuracy",
)
BOOTSTRAP_RESAMPLES = 100  # B of `eval`: its cost stays within about a fifth of the metrics'
MAX_RESAMPLES, MAX_REPEATS = 10_000, 100  # the most `eval --bootstrap` and `--repeats` take


def z_quantile(level: float = LEVEL) -> float:
    """The two-sided normal quantile: 1.95996... for level 0.95."""
    _check_level(level)
    return NormalDist().inv_cdf(0.5 + level / 2)


def _t_density(x: np.ndarray | float, dof: float) -> np.ndarray:
    """Student's t density, written with log-gammas so large dof stay finite."""
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return np.exp(log_c - (dof + 1) / 2 * np.log1p(np.square(x) / dof))


def _t_cdf(t: float, dof: float) -> float:
    """Student's t CDF at t >= 0: 1/2 plus the integral of its density from 0 to t (Simpson's rule
    on 4,000 intervals: far below a printed digit for the quantiles intervals use)."""
    x = np.linspace(0.0, t, 4001)
    weights = np.ones_like(x)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return 0.5 + float((weights * _t_density(x, dof)).sum()) * (t / 4000) / 3


def t_quantile(level: float, dof: float) -> float:
    """The two-sided Student's t quantile with ``dof`` degrees of freedom: 12.706 for (0.95, 1),
    2.262 for (0.95, 9); tends to :func:`z_quantile` as dof grows. Newton's method on the CDF from
    the normal quantile (the t quantile lies above it, where the CDF is concave: no overshoot)."""
    _check_level(level)
    if not dof > 0:
        raise ValueError(f"degrees of freedom must be positive, got {dof}")
    target = 0.5 + level / 2
    t = z_quantile(level)
    for _ in range(100):
        step = (_t_cdf(t, dof) - target) / float(_t_density(t, dof))
        t -= step
        if abs(step) < 1e-10 * t:
            break
    return t


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")


def normal_interval(value: float, se: float, level: float = LEVEL) -> dict[str, float | None]:
    """``{"se", "low", "high", "values": None}``: value +- z se."""
    half = z_quantile(level) * se
    return {"se": float(se), "low": float(value - half), "high": float(value + half), "values": None}


def over_repeats(values: list[float], level: float = LEVEL) -> dict[str, object]:
    """The mean of K >= 2 repeated values and its t-interval: ``{"se", "low", "high", "values"}``,
    se = sd / sqrt(K) with the sample sd (K - 1 in the denominator)."""
    k = len(values)
    if k < 2:
        raise ValueError(f"an interval over repeats needs at least 2 values, got {k}")
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    se = sd / math.sqrt(k)
    half = t_quantile(level, k - 1) * se
    return {"se": se, "low": mean - half, "high": mean + half, "values": [float(v) for v in values]}


def difference(a: dict, b: dict, level: float = LEVEL) -> dict[str, float]:
    """B minus A for two independent estimates ``{"value", "se"}``: ``{"diff", "se", "low", "high"}``.

    The se is sqrt(se_a^2 + se_b^2). When both carry ``"values"`` (two or more repeats each), the
    interval uses Welch's t with the Welch-Satterthwaite degrees of freedom; otherwise the normal
    quantile. An interval that excludes 0 says the two differ at this level.
    """
    diff = float(b["value"]) - float(a["value"])
    va, vb = float(a["se"]) ** 2, float(b["se"]) ** 2
    se = math.sqrt(va + vb)
    ka, kb = len(a.get("values") or ()), len(b.get("values") or ())
    if ka >= 2 and kb >= 2 and se > 0:
        dof = (va + vb) ** 2 / (va**2 / (ka - 1) + vb**2 / (kb - 1))
        q = t_quantile(level, dof)
    else:
        q = z_quantile(level)
    return {"diff": diff, "se": se, "low": diff - q * se, "high": diff + q * se}


def pooled(values: list[float], ses: list[float]) -> dict[str, float | None]:
    """Runs of one recipe that differ only in their training seed, as one estimate.

    :param values: each run's metric; :param ses: each run's standard error (its sampling noise).
    :return: ``{"value", "se", "between_seed_sd"}``: the mean of the runs; its se, the larger of
        s^2 / k (s the sample sd between the k runs, which holds the training-seed spread and the
        sampling noise) and mean(se_i^2) / k (the sampling noise alone; the floor when a few runs
        happen to agree); ``between_seed_sd`` is s, None for a single run (whose se is its own).
    """
    k = len(values)
    if k == 0 or len(ses) != k:
        raise ValueError(f"need one se per value and at least one run, got {k} values and {len(ses)} ses")
    mean = sum(values) / k
    within = sum(s * s for s in ses) / k
    if k == 1:
        return {"value": float(mean), "se": float(ses[0]), "between_seed_sd": None}
    s2 = sum((v - mean) ** 2 for v in values) / (k - 1)
    return {"value": float(mean), "se": math.sqrt(max(s2, within) / k), "between_seed_sd": math.sqrt(s2)}


def binomial(correct: int, n: int, level: float = LEVEL) -> dict[str, float | int]:
    """An accuracy of ``correct`` out of ``n`` independent trials: ``{"accuracy", "se", "low",
    "high", "n"}``, se = sqrt(a (1 - a) / n) and Wilson's score interval (it stays within [0, 1]
    and is sound near 0 and 1, where a +- z se is not)."""
    if not 0 <= correct <= n or n < 1:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got {correct} of {n}")
    a, z = correct / n, z_quantile(level)
    centre = (a + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(a * (1 - a) / n + z * z / (4 * n * n))
    return {"accuracy": a, "se": math.sqrt(a * (1 - a) / n), "low": centre - half, "high": centre + half, "n": n}
