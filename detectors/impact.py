"""Which drift matters: each drifted feature's estimated effect on the model's output.

The profile's joint reference rows (:class:`~driftline.detectors.profile.JointRows`)
are scored twice per drifted feature, in one batch: once with that feature
as in the reference, once as in the window, every other feature unchanged;
the feature's impact is the distance between the two score distributions.
The window's distribution of the feature comes from its sketch (fine-bin
counts, category counts), so no value of the window is needed.

* A numeric value moves to the window's value at the same quantile (its
  quantile in the reference, from the fine bins and the reference sample;
  ties spread at random): the one-dimensional optimal transport, so a row
  keeps its place relative to its other features. Both sides are read
  through the same binned quantile function (a fine bin by cumulative
  share, then the reference sample's value at the same position inside it,
  or the bin's edges where the sample has none), the reference side with
  the reference's shares: binning moves both alike (the reference side is
  the row's value to the sample's resolution), and a feature whose shares
  did not change moves nothing. Values beyond the reference's range
  are the reference's extremes, so a shift out of range is underestimated.
* A category is kept with probability min(1, q/p) and otherwise drawn from
  the categories that gained share (the maximal coupling: as few rows
  change as the shares allow).
* Nulls stay nulls: the null-rate test watches them.

The impact is the Wasserstein-1 distance between the two score
distributions (the mean absolute difference of the sorted scores), in the
score's units. Unlike the change of the mean score it does not cancel when
some scores rise and others fall, it is 0 when no score changes, and it is
what the prediction-drift test would see had this feature alone drifted.
Both sides use the same rows and the same seeded draws (common random
numbers), so the difference is the feature's, not the sampling's. It is
the change of the model's *output*, not of its quality, estimated on a
sample of a few hundred reference rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.detectors.evaluate import ColumnResult
from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.detectors.sketch import ColumnSketch, WindowSketch

#: scores of feature columns (numeric: float64, NaN where missing; categorical: names), one per row
Scorer = Callable[[Mapping[str, np.ndarray]], np.ndarray]

BY_SCORE = "score_w1"  # ranked by the estimated effect on the score
BY_PSI = "psi"  # ranked by effect size (no joint rows in the profile, or the model could not score them)


@dataclass(frozen=True, slots=True)
class FeatureImpact:
    """Where one drifted feature ranks among a window's drifted features."""

    feature: str
    rank: int  # 1: the largest effect
    of: int  # drifted features ranked in the window
    impact: float | None  # Wasserstein-1 distance of the score (None when ranked by PSI)
    psi: float
    method: str  # BY_SCORE or BY_PSI


def drifted(results: Sequence[ColumnResult], alpha: float) -> list[ColumnResult]:
    """The window's data-drift results that flagged (``p < alpha``): the features to rank."""
    return [r for r in results if r.kind == "data_drift" and r.p_value < alpha]


def rank_drift(profile: ReferenceProfile, sketch: WindowSketch, flagged: Sequence[ColumnResult],
               score: Scorer | None, seed: int = 0,
               unseen_as: Mapping[str, str] | None = None) -> dict[str, FeatureImpact]:
    """Each flagged feature's rank by effect on the score; by PSI when that cannot be estimated.

    ``score`` is the version's own model (None: rank by PSI). Whatever the
    scorer raises propagates: the caller decides whether to fall back.
    ``unseen_as``: the category a categorical feature's unseen values are
    scored as (its ``unseen="impute"`` policy), where the window's unseen share goes.
    """
    known = {f.name for f in profile.features}
    flagged = [r for r in flagged if r.column in known]
    if not flagged:
        return {}
    if profile.rows is None or profile.rows.n == 0 or score is None:
        order = sorted(flagged, key=lambda r: (-r.psi, r.column))
        return {r.column: FeatureImpact(r.column, i + 1, len(order), None, r.psi, BY_PSI)
                for i, r in enumerate(order)}
    effects = impacts(profile, sketch, [r.column for r in flagged], score, seed, unseen_as)
    order = sorted(flagged, key=lambda r: (-effects[r.column], -r.psi, r.column))
    return {r.column: FeatureImpact(r.column, i + 1, len(order), effects[r.column], r.psi, BY_SCORE)
            for i, r in enumerate(order)}


def impacts(profile: ReferenceProfile, sketch: WindowSketch, features: Sequence[str], score: Scorer,
            seed: int = 0, unseen_as: Mapping[str, str] | None = None) -> dict[str, float]:
    """The Wasserstein-1 distance of the score when each feature alone moves from the reference to the window.

    One ``score`` call per feature, on twice the joint rows (reference side, window side).
    """
    rows = profile.rows
    if rows is None:
        raise ValueError("the profile has no joint rows; rebuild it (driftline profile build --force)")
    refs = {f.name: f for f in profile.features}
    n = rows.n
    doubled = {k: np.concatenate([v, v]) for k, v in rows.columns.items()}
    out: dict[str, float] = {}
    for name in features:
        rng = np.random.default_rng((seed, zlib.crc32(name.encode())))  # a feature's draws whatever else drifted
        base, moved = swap(refs[name], np.asarray(rows.columns[name]), sketch.columns[name], rng,
                           (unseen_as or {}).get(name))
        scores = np.asarray(score({**doubled, name: np.concatenate([base, moved])}), dtype=np.float64)
        if scores.shape != (2 * n,) or not np.isfinite(scores).all():
            raise ValueError(f"the model gave {scores.shape} scores, not {2 * n} finite ones, for the joint rows")
        out[name] = wasserstein1(scores[:n], scores[n:])
    return out


def swap(ref: NumericReference | CategoricalReference, values: np.ndarray, window: ColumnSketch,
         rng: np.random.Generator, unseen_as: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One feature's values of the joint rows as in the reference and as in the window (see the module)."""
    if isinstance(ref, NumericReference):
        return _numeric(ref, values, window, rng)
    return _categorical(ref, values, window, rng, unseen_as)


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance of two equal-sized samples: the mean absolute difference of their sorted values.

    >>> wasserstein1(np.array([0.0, 1.0]), np.array([1.5, 0.5]))
    0.5
    """
    return float(np.mean(np.abs(np.sort(a) - np.sort(b)))) if len(a) else 0.0


def _numeric(ref: NumericReference, values: np.ndarray, window: ColumnSketch,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    present = np.isfinite(values)
    x = values[present]
    base, moved = values.copy(), values.copy()
    if len(x) == 0 or window.fine.sum() == 0:
        return base, moved
    u = binned_cdf(ref, x, rng.random(len(x)))
    base[present] = binned_quantile(ref, ref.fine_counts, u)
    moved[present] = binned_quantile(ref, window.fine, u)
    return base, moved


def binned_cdf(ref: NumericReference, x: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """The reference's quantile of each value: :func:`binned_quantile`'s inverse (``jitter`` in [0, 1) spreads ties).

    The fine bin's cumulative share, plus the value's position among the
    reference sample's values in that bin (between the bin's edges where the
    sample has none) times the bin's share.
    """
    counts = np.asarray(ref.fine_counts, dtype=np.float64)
    shares = counts / counts.sum()
    below = np.cumsum(shares) - shares
    edges, sample = ref.fine_edges, ref.sample
    k = np.searchsorted(edges, x, side="right")
    if len(edges):
        lo = edges[np.clip(k - 1, 0, len(edges) - 1)]
        hi = edges[np.clip(k, 0, len(edges) - 1)]
        t = np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1.0), jitter)
    else:
        t = jitter
    if len(sample):
        bins = np.searchsorted(edges, sample, side="right")
        start = np.searchsorted(bins, k, side="left")
        count = np.searchsorted(bins, k, side="right") - start
        left = np.searchsorted(sample, x, side="left")
        ties = np.searchsorted(sample, x, side="right") - left
        t = np.where(count > 0, (left - start + jitter * ties) / np.maximum(count, 1), t)
    return below[k] + np.clip(t, 0.0, 1.0 - 1e-12) * shares[k]


def binned_quantile(ref: NumericReference, counts: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Values at quantiles ``u`` of the distribution ``counts`` gives over the reference's fine bins.

    A bin by cumulative share; inside it, the reference sample's value at the
    same relative position (the bin's edges, interpolated, where the sample has none).
    """
    counts = np.asarray(counts, dtype=np.float64)
    shares = counts / counts.sum()
    cum = np.cumsum(shares)
    cum[-1] = 1.0
    k = np.minimum(np.searchsorted(cum, u, side="right"), len(counts) - 1)
    width = shares[k]
    t = np.clip((u - (cum[k] - width)) / np.where(width > 0, width, 1.0), 0.0, 1.0 - 1e-12)
    edges, sample = ref.fine_edges, ref.sample
    if len(edges) == 0:
        return np.full(len(u), ref.mean)
    lo = edges[np.clip(k - 1, 0, len(edges) - 1)]
    hi = edges[np.clip(k, 0, len(edges) - 1)]
    value = lo + t * (hi - lo)
    if len(sample):
        bins = np.searchsorted(edges, sample, side="right")  # sorted, as the sample is
        start = np.searchsorted(bins, k, side="left")
        count = np.searchsorted(bins, k, side="right") - start
        at = np.minimum(start + (t * count).astype(np.int64), len(sample) - 1)
        value = np.where(count > 0, sample[at], value)
    return value


def _categorical(ref: CategoricalReference, values: np.ndarray, window: ColumnSketch,
                 rng: np.random.Generator, unseen_as: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows move from the reference's shares (its counts, not the rows' own: equal shares move nothing) to the
    window's; the window's unseen values count as the category they are scored as (else they were dead letters)."""
    cats = np.array(ref.categories, dtype=object)
    lut = {c: i for i, c in enumerate(ref.categories)}
    idx = np.fromiter((lut.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    known = idx >= 0
    q = np.asarray(window.counts[: len(cats)], dtype=np.float64)
    if unseen_as in lut:
        q[lut[str(unseen_as)]] += float(window.counts[-1])
    moved = np.array(values, dtype=object, copy=True)
    reference = np.asarray(ref.counts[: len(cats)], dtype=np.float64)
    if not known.any() or q.sum() == 0 or reference.sum() == 0:
        return np.array(values, dtype=object), moved
    q /= q.sum()
    p = reference / reference.sum()
    keep = np.where(p > 0, np.minimum(1.0, q / np.where(p > 0, p, 1.0)), 0.0)
    u, v = rng.random(len(values)), rng.random(len(values))
    go = known & (u >= keep[np.where(known, idx, 0)])
    surplus = np.maximum(q - p, 0.0)
    if go.any() and surplus.sum() > 0:
        cum = np.cumsum(surplus / surplus.sum())
        cum[-1] = 1.0
        moved[go] = cats[np.minimum(np.searchsorted(cum, v[go], side="right"), len(cats) - 1)]
    return np.array(values, dtype=object), moved
