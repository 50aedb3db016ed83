"""Window statistics: a merged sketch against the reference profile, one result per column.

Decision statistic per column, so that each column has one calibrated test
and the false-alarm rate per column per window is the configured level
whatever the window and reference sizes (see :mod:`driftline.detectors.stats`):

* numeric columns (and the score): the smooth test of order 4 on the fine
  bins, statistic ``chi2`` with up to 4 degrees of freedom; valid for ties,
  so count and mostly-constant columns are tested as exactly as continuous ones;
* categorical columns: the chi-square test of the 2×C table, rare levels pooled;
* null rates: Fisher's exact test against the reference's null count
  (the reference is a sample), one-sided;
* unseen-category shares (a categorical column's values outside the
  reference's categories, there when its unseen policy imputes them) and
  out-of-range shares (a numeric column's values beyond the reference's
  0.4th and 99.6th percentiles: its outer fine bins): the same test, against
  the reference's count (out of range: against 1.5 times it);
* the dead-letter rate and the duplicate-request rate: the exact binomial
  test against a configured expected rate (a rate, not a sample), one-sided;
* per segment field (the manifest's ``segments``), the demographic-parity
  difference of the positive-decision rates across its values (kind
  ``bias``), tested with :func:`~driftline.detectors.fairness.rate_disparity_p`;
  flagged only when it is also beyond the configured bound (``threshold``),
  so for these ``value > threshold`` is necessary, not sufficient.

PSI is reported with every drift result as an effect size, with the PSI this
window would show by chance (``psi_threshold``); it does not decide. In every
result ``value > threshold`` exactly when ``p_value < alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from driftline.detectors.fairness import POSITIVE, N, SegmentCounts, disparities, rate_disparity_p
from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.detectors.sketch import ColumnSketch, WindowSketch
from driftline.detectors.stats import (
    binomial_test,
    chi2_homogeneity,
    chi2_isf,
    psi,
    psi_chance_level,
    smooth_test,
    two_sample_rate_test,
)

SCORE = "__score__"
DEAD_LETTERS = "__dead_letters__"
DUPLICATES = "__duplicates__"
BIAS = "bias"  # the kind of the segment disparity results
DEMOGRAPHIC_PARITY = "demographic_parity_difference"
#: statistics that were a column's only one of their kind: their policy keys and alert ids name no statistic,
#: so policy state and alert ids saved before the others existed still match
_FIRST_OF_KIND = frozenset({"chi2", "ks", "null_rate", "dead_letter_rate"})
TAIL_SHARE = 0.01  # an outer fine bin holding more of the reference than this is no tail
TAIL_FACTOR = 1.5  # the out-of-range share flags above this many times the reference's (significantly)


@dataclass(frozen=True, slots=True)
class ColumnResult:
    """The statistics of one column in one window."""

    column: str
    kind: str  # data_drift, prediction_drift, multivariate_drift, data_quality
    #: chi2; null_rate, unseen_category_rate, out_of_range_rate, dead_letter_rate, duplicate_rate
    statistic: str
    value: float
    threshold: float  # flagged (p_value < alpha) exactly when value > threshold
    p_value: float
    psi: float
    psi_threshold: float  # the PSI a window this size shows by chance in alpha of the windows
    n: int
    reference_n: int
    top_bins: tuple[tuple[str, float, float], ...] = ()

    @property
    def parts(self) -> tuple[str, ...]:
        """What identifies this test of a window: (kind, column), and the statistic where a column has several."""
        if self.statistic in _FIRST_OF_KIND:
            return (self.kind, self.column)
        return (self.kind, self.column, self.statistic)

    @property
    def key(self) -> str:
        """The alert policy's key of this test (its history, cooldown and change detector)."""
        return ":".join(self.parts)


def evaluate(profile: ReferenceProfile, sketch: WindowSketch, alpha: float) -> list[ColumnResult]:
    """All column results of a window (columns with no data give none)."""
    out: list[ColumnResult] = []
    for ref in profile.features:
        col = sketch.columns[ref.name]
        if col.n > 0:
            labels = bin_labels(ref, hidden=ref.name in profile.personal)
            if isinstance(ref, NumericReference):
                out.append(_numeric(ref, col, "data_drift", alpha, labels=labels))
                tails = _out_of_range(ref, col, alpha)
                if tails is not None:
                    out.append(tails)
            else:
                out += [_categorical(ref, col, alpha, labels), _unseen(ref, col, alpha)]
        quality = _null_rate(ref, col, alpha)
        if quality is not None:
            out.append(quality)
    pca = profile.multivariate
    joint = sketch.columns.get(pca.errors.name) if pca is not None else None
    if pca is not None and joint is not None and joint.n > 0:
        out.append(_numeric(pca.errors, joint, "multivariate_drift", alpha,
                            labels=bin_labels(pca.errors, hidden=bool(profile.personal & set(pca.names)))))
    if sketch.score.n > 0:
        out.append(_numeric(profile.score, sketch.score, "prediction_drift", alpha, name=SCORE))
    return out


def _numeric(ref: NumericReference, col: ColumnSketch, kind: str, alpha: float, name: str | None = None,
             labels: list[str] | None = None) -> ColumnResult:
    stat, p, dof = (float(v[0]) for v in smooth_test(ref.fine_counts, col.fine))
    return _drift(name or ref.name, kind, stat, p, int(dof), alpha, ref, col, labels or bin_labels(ref))


def _categorical(ref: CategoricalReference, col: ColumnSketch, alpha: float, labels: list[str]) -> ColumnResult:
    stat, p, dof = (float(v[0]) for v in chi2_homogeneity(ref.counts, col.counts))
    return _drift(ref.name, "data_drift", stat, p, int(dof), alpha, ref, col, labels)


def _drift(name: str, kind: str, stat: float, p: float, dof: int, alpha: float,
           ref: NumericReference | CategoricalReference, col: ColumnSketch, labels: list[str]) -> ColumnResult:
    threshold = _consistent(stat, chi2_isf(alpha, max(dof, 1)), p, alpha)
    return ColumnResult(name, kind, "chi2", stat, threshold, p, psi(ref.counts, col.counts),
                        psi_chance_level(ref.counts, col.n, alpha), col.n, ref.n,
                        _top_bins(labels, ref.counts, col.counts))


def reference_nulls(ref: NumericReference | CategoricalReference) -> tuple[int, int]:
    """The reference's null count and rows (its ``n`` counts the values present; ``null_rate`` is of all rows)."""
    if ref.null_rate <= 0.0:
        return 0, ref.n
    if ref.null_rate >= 1.0 or ref.n == 0:
        return 0, 0  # nothing but nulls: no rate to compare with
    nulls = round(ref.n * ref.null_rate / (1.0 - ref.null_rate))
    return nulls, ref.n + nulls


def _null_rate(ref: NumericReference | CategoricalReference, col: ColumnSketch, alpha: float) -> ColumnResult | None:
    """One-sided exact test that the window has more nulls than the reference (both samples)."""
    total = col.n + col.nulls
    if total == 0:
        return None
    nulls, rows = reference_nulls(ref)
    return _share(ref.name, "null_rate", col.nulls, total, nulls, rows, alpha)


def _share(name: str, statistic: str, x: int, n: int, a: int, m: int, alpha: float) -> ColumnResult:
    """One-sided exact test that a window's share ``x / n`` exceeds the reference sample's ``a / m``."""
    p, critical = two_sample_rate_test(x, n, a, m, alpha)
    rate = x / n
    threshold = _consistent(rate, _rate_threshold(critical, n), p, alpha)
    return ColumnResult(name, "data_quality", statistic, rate, threshold, p, 0.0, 0.0, n, m)


def _unseen(ref: CategoricalReference, col: ColumnSketch, alpha: float) -> ColumnResult:
    """Share of values outside the reference's categories (their last count) against the reference's share."""
    return _share(ref.name, "unseen_category_rate", int(col.counts[-1]), col.n, int(ref.counts[-1]), ref.n, alpha)


def _out_of_range(ref: NumericReference, col: ColumnSketch, alpha: float) -> ColumnResult | None:
    """Share of values in the outer fine bins (below the reference's 0.4th percentile, at or above its 99.6th).

    Only a side whose bin holds at most :data:`TAIL_SHARE` of the reference
    is a tail (a discrete column's top bin may hold a common value: a rise
    there is drift, for the distribution test, not values out of range). The
    null hypothesis is a share up to :data:`TAIL_FACTOR` times the
    reference's: the bins are the reference's own quantiles, so one
    reference's true tail mass differs from its count by chance (about 8 %
    at 20,000 rows), and a test against the count itself would flag one
    unlucky column in most of its large windows.
    """
    tails = [(int(c), int(r)) for c, r in ((col.fine[0], ref.fine_counts[0]), (col.fine[-1], ref.fine_counts[-1]))
             if r <= TAIL_SHARE * ref.n]
    if not tails:
        return None
    window, reference = (sum(side) for side in zip(*tails, strict=True))
    return _share(ref.name, "out_of_range_rate", window, col.n, math.ceil(TAIL_FACTOR * reference), ref.n, alpha)


def dead_letter_result(sketch: WindowSketch, baseline_rate: float, alpha: float) -> ColumnResult | None:
    """Dead-letter rate of the window against the expected (configured) rate: one-sided exact binomial test."""
    return _configured_rate(DEAD_LETTERS, "dead_letter_rate", sketch.dead_letters, sketch.messages, baseline_rate,
                            alpha)


def duplicate_result(sketch: WindowSketch, baseline_rate: float, alpha: float) -> ColumnResult | None:
    """Share of the window's checked requests whose id came before, against the expected (configured) rate."""
    return _configured_rate(DUPLICATES, "duplicate_rate", sketch.duplicates, sketch.ids, baseline_rate, alpha)


def window_results(profile: ReferenceProfile, sketch: WindowSketch, alpha: float, dead_letter_rate: float,
                   duplicate_rate: float) -> list[ColumnResult]:
    """Every result of a window: its columns', then its dead-letter and duplicate rates against the expected ones."""
    out = evaluate(profile, sketch, alpha)
    for extra in (dead_letter_result(sketch, dead_letter_rate, alpha),
                  duplicate_result(sketch, duplicate_rate, alpha)):
        if extra is not None:
            out.append(extra)
    return out


def bias_results(segments: dict[str, SegmentCounts], bound: float, max_values: int) -> list[ColumnResult]:
    """One result per segment field: the decision-rate spread across its ``max_values`` most frequent values.

    ``top_bins`` names the values with the highest and lowest rates (and the
    overall rate as the reference share), for the alert's reader.
    """
    out = []
    for name, raw in sorted(segments.items()):
        counts = raw.capped(max_values)
        if len(counts.values) < 2:
            continue
        k = counts.counts
        spread = disparities(counts).demographic_parity_difference
        if math.isnan(spread):
            continue
        p = rate_disparity_p(k[:, POSITIVE], k[:, N])
        overall = float(k[:, POSITIVE].sum() / max(k[:, N].sum(), 1))
        rates = k[:, POSITIVE] / np.maximum(k[:, N], 1)
        ends = [int(np.argmax(rates)), int(np.argmin(rates))]
        top = tuple((counts.values[i], overall, float(rates[i])) for i in ends)
        out.append(ColumnResult(name, BIAS, DEMOGRAPHIC_PARITY, spread, bound, p, 0.0, 0.0, counts.total, 0, top))
    return out


def _configured_rate(name: str, statistic: str, x: int, n: int, baseline_rate: float,
                     alpha: float) -> ColumnResult | None:
    if n == 0:
        return None
    p, critical = binomial_test(x, n, baseline_rate, alpha)
    rate = x / n
    threshold = _consistent(rate, _rate_threshold(critical, n), p, alpha)
    return ColumnResult(name, "data_quality", statistic, rate, threshold, p, 0.0, 0.0, n, 0)


def _rate_threshold(critical: int, total: int) -> float:
    """The largest rate not flagged: one count below the critical count (1.0 when nothing can be flagged)."""
    return min(critical - 1, total) / total


def _consistent(value: float, threshold: float, p: float, alpha: float) -> float:
    """``threshold``, nudged in the last bit where rounding put ``value`` on the wrong side of it."""
    if (value > threshold) == (p < alpha):
        return threshold
    return math.nextafter(value, -math.inf) if p < alpha else value


def bin_labels(ref: NumericReference | CategoricalReference, hidden: bool = False) -> list[str]:
    """Readable names of a reference's PSI bins (numeric intervals) or categories (plus "(other)");
    ``hidden`` (a personal feature): numbered instead, so no value of the field is shown."""
    if isinstance(ref, NumericReference):
        return [f"bin {i + 1}" for i in range(len(ref.edges) + 1)] if hidden else _bin_labels(ref.edges)
    named = [f"category {i + 1}" for i in range(len(ref.categories))] if hidden else list(ref.categories)
    return [*named, "(other)"]


def _bin_labels(edges: np.ndarray) -> list[str]:
    bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
    return [f"[{a}, {b})" for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _top_bins(labels: list[str], ref: np.ndarray, cur: np.ndarray, k: int = 3) -> tuple[tuple[str, float, float], ...]:
    p = ref / max(ref.sum(), 1)
    q = cur / max(cur.sum(), 1)
    order = np.argsort(-np.abs(q - p))[:k]
    return tuple((labels[i], float(p[i]), float(q[i])) for i in order.tolist())
