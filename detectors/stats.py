"""Two-sample drift tests over binned counts, calibrated at any window size.

Everything works on counts (a reference histogram and a window histogram over
the same bins), so windows merged from many workers give exactly the answer
of one big window. The reference is a sample too, so every test is a
two-sample test and its size enters the test: a one-sample test that takes
the reference's frequencies as exact fires far too often once windows are
as large as the reference.

* Numeric columns: Neyman's smooth test of order 4 (:func:`smooth_test`) on
  the fine bins pooled to 5 expected counts: the window's sums of the first
  four polynomials of the pooled mid-rank made orthonormal (location, scale,
  skewness, kurtosis), each over its exact permutation variance; χ²(4)
  under no drift. Tied values share one mid-rank and the variance counts the
  ties, so count and mostly-constant columns keep the level, where KS's
  Kolmogorov p-value (continuous data only) almost never fires.
* Categorical columns: Pearson's chi-square of the 2×C table, levels with an
  expected count below 5 in either sample pooled (:func:`chi2_homogeneity`).
* Rates: exact tests, the conditional (Fisher) one when the baseline is a
  sample and the binomial one when it is a configured rate; the p-value is
  the mid-p (half the probability of the observed count), capped so the
  false-alarm rate can never exceed 1.5 α where the counts are few.
* PSI is an effect size; :func:`psi_chance_level` says how large a PSI a
  window of this size shows by chance in ``alpha`` of the windows (both
  sample sizes in it; a seeded parametric bootstrap where counts are small).

p-values come from closed forms written here in numpy, so the hot path needs
no scipy; the tests check them against scipy. The tests take a batch of
windows (rows) and return arrays, so a calibration study runs thousands of
windows in one call; a single window is a batch of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

#: Added to empty bins before taking logs in PSI (the usual floor).
PSI_EPSILON = 1e-4
#: Bins are pooled until each one's expected count is at least this in both samples.
MIN_EXPECTED = 5.0
#: Components of the smooth test: location, scale, skewness, kurtosis.
SMOOTH_ORDER = 4
#: A discrete test's p-value is at least the exact tail over this, so its false-alarm rate is at most this × alpha.
MIDP_CAP = 1.5
#: PSI's chance level is the asymptotic one when every reference bin expects this many counts in both samples.
PSI_ASYMPTOTIC_COUNT = 50.0
#: Parametric-bootstrap draws for PSI's chance level below that.
PSI_DRAWS = 4000


# -- PSI ----------------------------------------------------------------------------------------


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index between two histograms over the same bins.

    >>> round(psi(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
    """
    return float(psi_rows(reference, current, epsilon)[0])


def psi_rows(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """PSI of each row of ``current`` against the matching (or only) row of ``reference``."""
    p = _proportions(_rows(reference), epsilon)
    q = _proportions(_rows(current), epsilon)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=1))


def _proportions(counts: np.ndarray, epsilon: float) -> np.ndarray:
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, counts / np.where(total > 0, total, 1), 1.0 / counts.shape[1])
    p = np.maximum(p, epsilon)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def psi_threshold(bins: int, n: int, m: int, alpha: float) -> float:
    """PSI a window of ``n`` exceeds with probability ``alpha`` under no drift, for large counts.

    Under no drift PSI ≈ (1/n + 1/m) · χ²(bins - 1) once every bin expects
    many counts in both samples; with few counts (empty bins, rare levels)
    the floor in PSI's logarithm makes it larger, which
    :func:`psi_chance_level` accounts for.
    """
    return (1.0 / n + 1.0 / m) * chi2_isf(alpha, max(bins - 1, 1))


def psi_chance_level(reference: np.ndarray, n: int, alpha: float) -> float:
    """The PSI a window of ``n`` shows by chance in ``alpha`` of the windows when nothing drifted.

    Both samples' sizes are in it: the asymptotic (1/n + 1/m) · χ² level
    where every reference bin expects at least :data:`PSI_ASYMPTOTIC_COUNT`
    counts in both samples, and below that the 1 - alpha quantile of PSI
    between a reference and a window drawn from the reference's own
    frequencies (:data:`PSI_DRAWS` seeded draws, so it is deterministic).
    """
    ref = np.asarray(reference, dtype=np.int64)
    m = int(ref.sum())
    if n <= 0 or m <= 0:
        return 0.0
    seen = ref[ref > 0]
    if min(n, m) * seen.min() / m >= PSI_ASYMPTOTIC_COUNT:
        return psi_threshold(len(seen), n, m, alpha)
    return _psi_bootstrap(ref.tobytes(), len(ref), int(n), float(alpha))


@lru_cache(maxsize=1024)
def _psi_bootstrap(reference: bytes, bins: int, n: int, alpha: float) -> float:
    ref = np.frombuffer(reference, dtype=np.int64, count=bins)
    m = int(ref.sum())
    p = ref / m
    rng = np.random.default_rng([n, m, bins])
    values = psi_rows(rng.multinomial(m, p, size=PSI_DRAWS), rng.multinomial(n, p, size=PSI_DRAWS))
    return float(np.quantile(values, 1.0 - alpha, method="higher"))


# -- pooling ------------------------------------------------------------------------------------


def _rows(a: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(a, dtype=np.float64))


def _pair(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = _rows(reference), _rows(current)
    shape = np.broadcast_shapes(ref.shape, cur.shape)
    return np.broadcast_to(ref, shape), np.broadcast_to(cur, shape)


def pool(reference: np.ndarray, current: np.ndarray, *, ordered: bool,
         min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, np.ndarray]:
    """Merge bins until each pooled bin expects at least ``min_expected`` counts in both samples.

    Expected counts are those of no drift given the pooled counts
    (``min(n, m) · (r_k + c_k) / (n + m)`` in the smaller sample). Ordered
    bins (numeric) merge with their neighbours, scanning up and closing a
    pooled bin once it is large enough (a small last one joins the one before);
    unordered ones (categories) the same way in order of expected count, so
    rare levels pool with each other. Rows are windows; returns the pooled
    reference and window counts, the pooled bins in order, then zeros up to the
    row with the most.
    """
    ref, cur = _pair(reference, current)
    rows, k = ref.shape
    n, m = cur.sum(axis=1), ref.sum(axis=1)
    total = np.maximum(n + m, 1.0)
    expected = (ref + cur) * (np.minimum(n, m) / total)[:, None]
    if ordered:
        ids = _greedy_groups(expected, min_expected)
    else:
        order = np.argsort(expected, axis=1, kind="stable")
        ids = np.empty((rows, k), dtype=np.int64)
        np.put_along_axis(ids, order, _greedy_groups(np.take_along_axis(expected, order, axis=1), min_expected),
                          axis=1)
    groups = int(ids.max()) + 1 if ids.size else 0
    if ordered:  # contiguous groups: add up each run
        first = np.ones((rows, k), dtype=bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        starts = np.flatnonzero(first)
        row, gid = starts // k, ids.ravel()[starts]

        def summed(x: np.ndarray) -> np.ndarray:
            out = np.zeros((rows, groups))
            out[row, gid] = np.add.reduceat(np.ascontiguousarray(x).ravel(), starts)
            return out
    else:
        flat = (ids + k * np.arange(rows)[:, None]).ravel()

        def summed(x: np.ndarray) -> np.ndarray:
            return np.bincount(flat, weights=np.ascontiguousarray(x).ravel(),
                               minlength=rows * k).reshape(rows, k)[:, :groups]

    return summed(ref), summed(cur)


def _greedy_groups(expected: np.ndarray, min_expected: float) -> np.ndarray:
    """Group ids along each row: consecutive bins join a group until its sum reaches ``min_expected``."""
    rows, k = expected.shape
    if rows == 1:  # one window: plain Python is faster than numpy over a row of one
        out = [0] * k
        g, total = 0, 0.0
        for i, e in enumerate(expected[0].tolist()):
            out[i] = g
            total += e
            if total >= min_expected:
                g, total = g + 1, 0.0
        if k and out[-1] == g and g > 0:
            out = [g - 1 if v == g else v for v in out]
        return np.array([out], dtype=np.int64)
    columns = np.ascontiguousarray(expected.T)  # one bin per row: the scan reads contiguous memory
    ids_t = np.empty((k, rows), dtype=np.int64)
    gs = np.zeros(rows, dtype=np.int64)
    acc = np.zeros(rows)
    for i in range(k):
        ids_t[i] = gs
        acc += columns[i]
        close = acc >= min_expected
        gs += close
        acc[close] = 0.0
    ids = np.ascontiguousarray(ids_t.T)
    if k:
        tail = (ids[:, -1] == gs) & (gs > 0)
        ids[tail] = np.where(ids[tail] == gs[tail, None], gs[tail, None] - 1, ids[tail])
    return ids


# -- tests over binned counts -------------------------------------------------------------------


def chi2_homogeneity(reference: np.ndarray, current: np.ndarray, *, ordered: bool = False,
                     min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pearson's chi-square test of homogeneity of the 2×K table (reference, window), per row.

    Bins are pooled first (:func:`pool`) so every expected count is at
    least ``min_expected`` (0 turns pooling off); bins seen by neither sample
    are left out. Returns the statistics, p-values and degrees of freedom
    (0, with p = 1, where there is nothing to test).
    """
    ref, cur = _pair(reference, current)
    if min_expected > 0:
        ref, cur = pool(ref, cur, ordered=ordered, min_expected=min_expected)
    n, m = cur.sum(axis=1), ref.sum(axis=1)
    total = n + m
    col = ref + cur
    seen = col > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = cur - col * (n / total)[:, None]
        stat = np.where(seen, dev * dev / np.where(seen, col, 1.0), 0.0).sum(axis=1) * total * total / (n * m)
    dof = seen.sum(axis=1) - 1
    empty = (n == 0) | (m == 0) | (dof < 1)
    stat = np.where(empty, 0.0, stat)
    dof = np.where(empty, 0, dof)
    return stat, chi2_sf_array(stat, dof), dof


def smooth_test(reference: np.ndarray, current: np.ndarray, *, order: int = SMOOTH_ORDER,
                min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neyman's smooth test that window and reference share one distribution over ordered bins, per row.

    Bins are pooled to ``min_expected`` (:func:`pool`). Each pooled bin gets
    its mid-rank ``u`` in the pooled sample (tied values share one), and
    ``h_1 … h_order`` are the Legendre polynomials of ``2u - 1`` made
    orthonormal under the pooled bin frequencies (Gram-Schmidt). Conditional
    on the pooled counts the window is a random draw of ``n`` of the ``n + m``
    values, so ``U_j = Σ window_k h_j(k) / sqrt(n·m / (n + m - 1))`` has mean 0,
    variance 1 and no correlation across ``j`` exactly; the statistic
    ``Σ U_j²`` is χ² with one degree of freedom per component (fewer where
    the data have fewer distinct values). ``U_1`` is the tie-corrected
    Wilcoxon rank-sum test. Returns statistics, p-values and degrees of freedom.
    """
    ref, cur = _pair(reference, current)
    if min_expected > 0:
        ref, cur = pool(ref, cur, ordered=True, min_expected=min_expected)
    n, m = cur.sum(axis=1), ref.sum(axis=1)
    total = n + m
    valid = (n > 0) & (m > 0)
    p = (ref + cur) / np.where(valid, total, 1.0)[:, None]
    x = 2.0 * (np.cumsum(p, axis=1) - p / 2.0) - 1.0
    basis: list[np.ndarray] = []
    stat = np.zeros(len(n))
    dof = np.zeros(len(n), dtype=np.int64)
    prev, poly = np.ones_like(x), x
    for j in range(1, order + 1):
        if j > 1:  # Legendre recurrence
            prev, poly = poly, ((2 * j - 1) * x * poly - (j - 1) * prev) / j
        v = poly - (p * poly).sum(axis=1, keepdims=True)
        for b in basis:  # modified Gram-Schmidt
            v = v - (p * v * b).sum(axis=1, keepdims=True) * b
        norm2 = (p * v * v).sum(axis=1)
        ok = valid & (norm2 > 1e-9 * (p * poly * poly).sum(axis=1))
        h = np.where(ok[:, None], v / np.sqrt(np.where(ok, norm2, 1.0))[:, None], 0.0)
        basis.append(h)
        score = (cur * h).sum(axis=1)
        stat += score * score
        dof += ok
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(valid & (dof > 0), stat * (total - 1) / (n * m), 0.0)
    return stat, chi2_sf_array(stat, dof), dof


def chi2_counts(reference: np.ndarray, current: np.ndarray,
                min_expected: float = MIN_EXPECTED) -> tuple[float, float]:
    """Chi-square test of homogeneity between the reference's and the window's category counts.

    A two-sample test (the 2×C contingency table), because the reference is
    a sample too; levels expecting fewer than ``min_expected`` counts are
    pooled (:func:`pool`). Returns the statistic and p-value.
    """
    stat, p, _ = chi2_homogeneity(reference, current, min_expected=min_expected)
    return float(stat[0]), float(p[0])


# -- rates: exact tests -------------------------------------------------------------------------


def _upper_tail(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(X > k) and P(X = k) over a window of the support holding all the mass."""
    ge = np.cumsum(f[::-1])[::-1]
    return np.append(ge[1:], 0.0), f


def _capped_midp(greater: np.ndarray | float, equal: np.ndarray | float) -> np.ndarray:
    """The mid-p P(X > x) + P(X = x)/2, but at least the exact P(X >= x) / MIDP_CAP, at most 1."""
    return np.minimum(np.maximum(np.asarray(greater) + np.asarray(equal) / 2.0,
                                 (np.asarray(greater) + np.asarray(equal)) / MIDP_CAP), 1.0)


def _pmf(lo: int, hi: int, log_ratio: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Probabilities over lo..hi from log f(k+1) - log f(k), normalised over the window."""
    ks = np.arange(lo, hi, dtype=np.float64)
    logf = np.concatenate(([0.0], np.cumsum(log_ratio(ks))))
    f = np.exp(logf - logf.max())
    return np.asarray(f / f.sum())


def _span(mean: float, var: float, lo: int, hi: int) -> tuple[int, int]:
    """A window of the support around the mean beyond which the probability is negligible (< 1e-300)."""
    reach = 40.0 * math.sqrt(var) + 40.0
    return max(lo, math.floor(mean - reach)), min(hi, math.ceil(mean + reach))


def _binomial(n: int, p0: float) -> tuple[int, np.ndarray]:
    lo, hi = _span(n * p0, n * p0 * (1 - p0), 0, n)
    odds = math.log(p0) - math.log1p(-p0)
    return lo, _pmf(lo, hi, lambda k: np.log(n - k) - np.log(k + 1) + odds)


def binomial_test(x: int, n: int, p0: float, alpha: float) -> tuple[float, int]:
    """One-sided exact test that ``x`` events in ``n`` trials exceed a known rate ``p0``.

    Returns the capped mid-p p-value (see :data:`MIDP_CAP`) and the critical
    count: the smallest ``x`` with p-value below ``alpha`` (``n + 1`` if none).
    """
    if n <= 0:
        return 1.0, 1
    if p0 <= 0.0:
        return (0.0 if x > 0 else 1.0), 1
    if p0 >= 1.0:
        return 1.0, n + 1
    lo, f = _binomial(n, p0)
    gt, eq = _upper_tail(f)
    pv = _capped_midp(gt, eq)
    below = np.flatnonzero(pv < alpha)
    critical = lo + int(below[0]) if len(below) else (lo + len(f) if lo + len(f) <= n else n + 1)
    if x < lo:
        return 1.0, critical
    if x >= lo + len(f):
        return 0.0, critical
    return float(pv[x - lo]), critical


def _hypergeometric_p(x: int, n: int, a: int, m: int) -> float:
    """Capped mid-p of ``x`` of ``t = a + x`` events falling in the sample of ``n`` (the other ``m`` hold ``a``)."""
    t, total = a + x, n + m
    lo_s, hi_s = max(0, t - m), min(t, n)
    mean = t * n / total
    var = t * (n / total) * (m / total) * (total - t) / max(total - 1, 1)
    lo, hi = _span(mean, var, lo_s, hi_s)
    if x < lo:
        return 1.0
    if x > hi:
        return 0.0
    f = _pmf(lo, hi, lambda k: np.log(t - k) + np.log(n - k) - np.log(k + 1) - np.log(m - t + k + 1))
    gt, eq = _upper_tail(f)
    return float(_capped_midp(gt[x - lo], eq[x - lo]))


def fisher_two_sided(x: int, n: int, a: int, m: int) -> float:
    """Two-sided Fisher test of ``x / n`` against ``a / m``: twice the smaller capped mid-p tail, at most 1."""
    if n <= 0 or m <= 0:
        return 1.0
    return min(1.0, 2.0 * min(_hypergeometric_p(x, n, a, m), _hypergeometric_p(n - x, n, m - a, m)))


def two_sample_rate_test(x: int, n: int, a: int, m: int, alpha: float) -> tuple[float, int]:
    """One-sided exact test that a window's rate ``x / n`` exceeds a reference sample's ``a / m``.

    Fisher's conditional test: given the ``a + x`` events of both samples,
    the window's share is hypergeometric under no change, whatever the rate;
    so the reference's own sampling error is in the test. Returns the capped
    mid-p p-value (:data:`MIDP_CAP`) and the critical count: the smallest
    window count with p-value below ``alpha`` given ``a`` (``n + 1`` if none).
    """
    if n <= 0:
        return 1.0, 1
    if m <= 0:
        return 1.0, n + 1
    p = _hypergeometric_p(x, n, a, m)
    rate = a / m
    guess = round(n * (rate + 2.33 * math.sqrt(max(rate * (1 - rate), 0.25 / m) * (1 / n + 1 / m))))
    return p, _first_below(lambda k: _hypergeometric_p(k, n, a, m), alpha, min(max(guess, 0), n + 1), n)


def _first_below(f: Callable[[int], float], alpha: float, start: int, hi: int) -> int:
    """Smallest k in 0..hi with f(k) < alpha for a decreasing f (hi + 1 if none), galloping from ``start``."""
    def below(k: int) -> bool:
        return k > hi or f(k) < alpha

    start = min(max(start, 0), hi + 1)
    step = 1
    if below(start):  # the answer is at or left of start
        good, bad = start, -1
        while good - step >= 0:
            if not below(good - step):
                bad = good - step
                break
            good -= step
            step *= 2
    else:
        good, bad = hi + 1, start
        while bad + step <= hi:
            if below(bad + step):
                good = bad + step
                break
            bad += step
            step *= 2
    while good - bad > 1:  # below(good), not below(bad) (or bad = -1)
        mid = (good + bad) // 2
        if below(mid):
            good = mid
        else:
            bad = mid
    return good


# -- distributions ------------------------------------------------------------------------------


def chi2_sf(x: float, dof: int) -> float:
    """P(χ²(dof) > x) for integer degrees of freedom (1 where ``dof <= 0`` or ``x <= 0``)."""
    return float(chi2_sf_array(np.array([x], dtype=np.float64), np.array([dof]))[0])


def chi2_sf_array(x: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """P(χ²(dof) > x) elementwise, for integer degrees of freedom.

    The closed form: ``exp(-x/2) Σ (x/2)^i / i!`` over ``i < dof/2`` for even
    ``dof``, ``erfc(sqrt(x/2)) + exp(-x/2) Σ (x/2)^(i - 1/2) / Γ(i + 1/2)``
    over ``1 <= i <= (dof - 1)/2`` for odd; terms in logarithms. 1 where
    ``dof <= 0`` or ``x <= 0``.
    """
    xs, ks = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(dof, dtype=np.int64))
    shape = xs.shape
    xs, ks = xs.ravel(), ks.ravel()
    out = np.ones(len(xs))
    live = (ks > 0) & (xs > 0)
    if live.any():
        h = xs[live] / 2.0
        k = ks[live]
        odd = (k % 2) == 1
        terms = int(k.max()) // 2 + 1
        i = np.arange(terms, dtype=np.float64)
        log_h = np.log(h)[:, None]
        # even dof: i = 0 .. k/2 - 1, with log i!; odd: exponent i + 1/2 for i = 0 .. (k-3)/2, log Γ(i + 3/2)
        power = np.where(odd[:, None], i + 0.5, i)
        log_gamma = np.where(odd[:, None], _log_gamma_half(terms)[None, :], _log_factorial(terms)[None, :])
        count = np.where(odd, (k - 1) // 2, k // 2)
        use = i[None, :] < count[:, None]
        with np.errstate(over="ignore", under="ignore"):
            series = np.where(use, np.exp(-h[:, None] + power * log_h - log_gamma), 0.0).sum(axis=1)
        series[odd] += np.array([math.erfc(math.sqrt(v)) for v in h[odd].tolist()])
        out[live] = np.minimum(series, 1.0)
    return out.reshape(shape)


@lru_cache(maxsize=8)
def _log_factorials(count: int) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, count, dtype=np.float64)))))


@lru_cache(maxsize=8)
def _log_gamma_halves(count: int) -> np.ndarray:
    # log Γ(i + 3/2) for i = 0, 1, ...: Γ(3/2) = √π / 2, Γ(z + 1) = z Γ(z)
    return math.log(math.sqrt(math.pi) / 2.0) + np.concatenate(
        ([0.0], np.cumsum(np.log(np.arange(1, count, dtype=np.float64) + 0.5))))


def _log_factorial(count: int) -> np.ndarray:
    return _log_factorials(_bucket(count))[:count]


def _log_gamma_half(count: int) -> np.ndarray:
    return _log_gamma_halves(_bucket(count))[:count]


def _bucket(count: int) -> int:
    return max(64, 1 << (count - 1).bit_length())


@lru_cache(maxsize=4096)
def chi2_isf(p: float, dof: int) -> float:
    """The x with P(χ²(dof) > x) = p."""
    return _inverse_sf(lambda x: chi2_sf(x, dof), p, 0.0,
                       max(10.0, dof + 20.0 * math.sqrt(2.0 * dof) + 100.0))


def _inverse_sf(sf: Callable[[float], float], p: float, lo: float, hi: float, steps: int = 200) -> float:
    """The x in [lo, hi] with sf(x) = p, by bisection (sf decreasing)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if sf(mid) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def normal_isf(p: float) -> float:
    """The z with P(Z > z) = p."""
    return _inverse_sf(normal_sf, p, -10.0, 10.0)


# -- Kolmogorov-Smirnov (descriptive; not a decision test on binned data) -------------------------


def ks_counts(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value from counts over the same fine bins.

    The statistic is the largest gap between the two empirical CDFs at the
    bin edges. The Kolmogorov p-value holds for continuous data only: with
    ties (counts, mostly-constant columns) it is far too large, which is
    why :func:`smooth_test` decides drift on numeric columns.
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


def kolmogorov_isf(p: float) -> float:
    """The x with P(K > x) = p."""
    return _inverse_sf(kolmogorov_sf, p, 0.2, 10.0)
