"""Two-sample drift statistics over binned counts: PSI, Kolmogorov-Smirnov, chi-square.

Everything works on counts (a reference histogram and a window histogram over
the same bins), so windows merged from many workers give exactly the answer
of one big window. p-values come from the asymptotic distributions, written
here in numpy so the hot path needs no scipy; the tests check them against
scipy on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: Added to empty bins before taking logs in PSI (the usual floor).
PSI_EPSILON = 1e-4


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index between two histograms over the same bins.

    >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
    """
    p = _proportions(reference, epsilon)
    q = _proportions(current, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def _proportions(counts: np.ndarray, epsilon: float) -> np.ndarray:
    total = counts.sum()
    p = counts / total if total > 0 else np.full(len(counts), 1.0 / len(counts))
    p = np.maximum(p, epsilon)
    return p / p.sum()


def psi_threshold(bins: int, n: int, m: int, alpha: float) -> float:
    """PSI a window of ``n`` exceeds with probability ``alpha`` when nothing drifted.

    Under no drift PSI ≈ (1/n + 1/m) · χ²(bins - 1), so a fixed cut such as
    0.1 fires on most small windows; this one keeps the false-alarm rate at
    ``alpha`` whatever the window size.
    """
    return (1.0 / n + 1.0 / m) * chi2_isf(alpha, bins - 1)


def ks_counts(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value from counts over the same fine bins.

    The statistic is the largest gap between the two empirical CDFs at the
    bin edges; with fine reference-quantile bins it is below the exact one by
    at most the largest bin's share of either sample (about 1/bins).
    """
    n, m = float(current.sum()), float(reference.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(current) / n - np.cumsum(reference) / m)))
    return d, kolmogorov_sf(d * math.sqrt(n * m / (n + m)))


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (what ``scipy.special.kolmogorov`` gives)."""
    if x < 0.2:  # P(K > 0.2) = 1 to double precision; the series converges slowly there
        return 1.0
    k = np.arange(1, 101)
    terms = 2.0 * (-1.0) ** (k - 1) * np.exp(-2.0 * k * k * x * x)
    return float(min(1.0, max(0.0, terms.sum())))


def _inverse_sf(sf: Callable[[float], float], p: float, lo: float, hi: float, steps: int = 200) -> float:
    """The x in [lo, hi] with sf(x) = p, by bisection (sf decreasing)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if sf(mid) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def kolmogorov_isf(p: float) -> float:
    """The x with P(K > x) = p."""
    return _inverse_sf(kolmogorov_sf, p, 0.2, 10.0)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_isf(p: float) -> float:
    """The z with P(Z > z) = p."""
    return _inverse_sf(normal_sf, p, -10.0, 10.0)


def rate_test(rate: float, expected: float, n: int, alpha: float) -> tuple[float, float]:
    """One-sided test that a rate over ``n`` trials exceeds ``expected`` (normal approximation).

    Returns the p-value and the rate this ``n`` exceeds with probability ``alpha``.
    """
    se = math.sqrt(expected * (1 - expected) / n)
    return normal_sf((rate - expected) / se), expected + normal_isf(alpha) * se


def ks_threshold(n: int, m: int, alpha: float) -> float:
    """The KS statistic a window of ``n`` exceeds with probability ``alpha`` under no drift."""
    return kolmogorov_isf(alpha) / math.sqrt(n * m / (n + m))


def chi2_counts(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity between the reference and the window's category counts.

    A two-sample test (the 2×C contingency table), because the reference is
    a sample too: treating its frequencies as exact makes the test fire too
    often once windows are as large as the reference. Categories seen by
    neither sample are left out.
    """
    ref = reference.astype(np.float64)
    cur = current.astype(np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n, m = cur.sum(), ref.sum()
    if n == 0 or m == 0 or len(cur) < 2:
        return 0.0, 1.0
    col = ref + cur
    exp_cur = col * n / (n + m)
    exp_ref = col * m / (n + m)
    stat = float(np.sum((cur - exp_cur) ** 2 / exp_cur) + np.sum((ref - exp_ref) ** 2 / exp_ref))
    return stat, chi2_sf(stat, len(cur) - 1)


def chi2_sf(x: float, dof: int) -> float:
    """P(χ²(dof) > x) through the regularised upper incomplete gamma function."""
    if dof <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def chi2_isf(p: float, dof: int) -> float:
    """The x with P(χ²(dof) > x) = p."""
    return _inverse_sf(lambda x: chi2_sf(x, dof), p, 0.0, max(10.0, dof + 20.0 * math.sqrt(2.0 * dof) + 100.0))


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above)."""
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - math.lgamma(a)) * h)
