"""Window statistics: a merged sketch against the reference profile, one result per column.

Decision statistic per column, so that each column has one calibrated test
and the false-alarm rate per column per window is the configured level:
numeric columns (and the score) use the two-sample KS test on fine bins,
categorical columns the chi-square test; PSI is reported with it, and its
sample-size-aware threshold says how large a PSI this window could show by
chance. Null rates are tested against the reference null rate (data quality).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.detectors.sketch import ColumnSketch, WindowSketch
from driftline.detectors.stats import chi2_counts, chi2_isf, ks_counts, ks_threshold, psi, psi_threshold, rate_test

SCORE = "__score__"
DEAD_LETTERS = "__dead_letters__"


@dataclass(frozen=True, slots=True)
class ColumnResult:
    """The statistics of one column in one window."""

    column: str
    kind: str  # data_drift, prediction_drift, data_quality
    statistic: str  # ks, chi2, null_rate
    value: float
    threshold: float  # the value this window would exceed with probability alpha under no drift
    p_value: float
    psi: float
    psi_threshold: float
    n: int
    reference_n: int
    top_bins: tuple[tuple[str, float, float], ...] = ()


def evaluate(profile: ReferenceProfile, sketch: WindowSketch, alpha: float) -> list[ColumnResult]:
    """All column results of a window (columns with no data give none)."""
    out: list[ColumnResult] = []
    for ref in profile.features:
        col = sketch.columns[ref.name]
        if col.n > 0:
            out.append(_numeric(ref, col, "data_drift", alpha) if isinstance(ref, NumericReference)
                       else _categorical(ref, col, alpha))
        quality = _null_rate(ref.name, ref.null_rate, ref.n, col, alpha)
        if quality is not None:
            out.append(quality)
    if sketch.score.n > 0:
        out.append(_numeric(profile.score, sketch.score, "prediction_drift", alpha, name=SCORE))
    return out


def _numeric(ref: NumericReference, col: ColumnSketch, kind: str, alpha: float, name: str | None = None
             ) -> ColumnResult:
    d, p = ks_counts(ref.fine_counts, col.fine)
    value = psi(ref.counts, col.counts)
    labels = _bin_labels(ref.edges)
    return ColumnResult(name or ref.name, kind, "ks", d, ks_threshold(col.n, ref.n, alpha), p, value,
                        psi_threshold(len(ref.counts), col.n, ref.n, alpha), col.n, ref.n,
                        _top_bins(labels, ref.counts, col.counts))


def _categorical(ref: CategoricalReference, col: ColumnSketch, alpha: float) -> ColumnResult:
    stat, p = chi2_counts(ref.counts, col.counts)
    labels = [*ref.categories, "(other)"]
    dof = int(((ref.counts + col.counts) > 0).sum()) - 1
    return ColumnResult(ref.name, "data_drift", "chi2", stat, chi2_isf(alpha, max(dof, 1)), p,
                        psi(ref.counts, col.counts),
                        psi_threshold(len(ref.counts), col.n, ref.n, alpha), col.n, ref.n,
                        _top_bins(labels, ref.counts, col.counts))


def _null_rate(name: str, ref_rate: float, ref_n: int, col: ColumnSketch, alpha: float) -> ColumnResult | None:
    """One-sided test that the window has more nulls than the reference (normal approximation)."""
    total = col.n + col.nulls
    if total == 0:
        return None
    rate = col.nulls / total
    p, threshold = rate_test(rate, min(max(ref_rate, 0.5 / max(ref_n, 1)), 1.0 - 1e-9), total, alpha)
    return ColumnResult(name, "data_quality", "null_rate", rate, threshold, p, 0.0, 0.0, total, ref_n)


def dead_letter_result(sketch: WindowSketch, baseline_rate: float, alpha: float) -> ColumnResult | None:
    """Dead-letter rate of the window against an expected rate (one-sided binomial, normal approximation)."""
    if sketch.messages == 0:
        return None
    rate = sketch.dead_letters / sketch.messages
    p, threshold = rate_test(rate, min(max(baseline_rate, 1e-4), 1 - 1e-9), sketch.messages, alpha)
    return ColumnResult(DEAD_LETTERS, "data_quality", "dead_letter_rate", rate, threshold, p, 0.0, 0.0,
                        sketch.messages, 0)


def bin_labels(ref: NumericReference | CategoricalReference) -> list[str]:
    """Readable names of a reference's PSI bins (numeric intervals) or categories (plus "(other)")."""
    if isinstance(ref, NumericReference):
        return _bin_labels(ref.edges)
    return [*ref.categories, "(other)"]


def _bin_labels(edges: np.ndarray) -> list[str]:
    bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
    return [f"[{a}, {b})" for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _top_bins(labels: list[str], ref: np.ndarray, cur: np.ndarray, k: int = 3) -> tuple[tuple[str, float, float], ...]:
    p = ref / max(ref.sum(), 1)
    q = cur / max(cur.sum(), 1)
    order = np.argsort(-np.abs(q - p))[:k]
    return tuple((labels[i], float(p[i]), float(q[i])) for i in order.tolist())
