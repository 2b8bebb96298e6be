"""95% intervals: Wilson's for proportions (top-k accuracy, agreement), Student's t for means."""

from __future__ import annotations

import math

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the Cornish-Fisher expansion
T_95 = (
    (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)
    + (2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860)
    + (2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half_width), min(1.0, center + half_width)


def t_quantile_95(degrees: int) -> float:
    """Two-sided 95% quantile of Student's t (table to 30 degrees of freedom, then Cornish-Fisher: < 1e-4 off)."""
    if degrees < 1:
        raise ValueError("Student's t needs at least one degree of freedom")
    if degrees <= len(T_95):
        return T_95[degrees - 1]
    z, v = Z_95, float(degrees)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def mean_interval(values: np.ndarray) -> tuple[float, float] | None:
    """Student's t 95% interval of the mean of `values` (None for fewer than two values)."""
    values = np.asarray(values, np.float64).ravel()
    if len(values) < 2:
        return None
    half_width = t_quantile_95(len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return float(values.mean()) - half_width, float(values.mean()) + half_width
