"""Small statistics for reports: success-rate confidence intervals and means over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then the normal 1.96).
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate; well behaved at 0% and 100% (unlike ±1.96·SE)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    m = sum(values) / n
    if n == 1:
        return (m, 0.0)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return (m, t * sd / math.sqrt(n))


def weighted_wilson_interval(
    successes: Sequence[int], trials: Sequence[int], z: float = 1.96
) -> tuple[float, float, float]:
    """Mean of several success rates (equal weights) and its 95% interval: ``(mean, low, high)``.

    The mean of group rates ``k_g / n_g`` is not a binomial proportion when the groups have
    different sizes, so the Wilson interval is taken at Kish's effective sample size
    ``1 / sum(w_g^2 / n_g)`` (w_g = 1 / G), the size whose binomial variance matches that of
    the weighted mean; with equal ``n_g`` it is the pooled Wilson interval.
    """
    if len(successes) != len(trials) or not trials or min(trials) <= 0:
        raise ValueError("weighted_wilson_interval needs one positive trial count per success count")
    w = 1.0 / len(trials)
    p = sum(w * k / n for k, n in zip(successes, trials, strict=True))
    n_eff = 1.0 / sum(w * w / n for n in trials)
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return (p, max(0.0, centre - half), min(1.0, centre + half))
