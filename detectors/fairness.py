"""Bias audits: per-segment decision counts, their disparities and a calibrated test of them.

A *segment* is a request field (``country``, ``channel``, a sensitive
attribute the model must not read) whose values split the monitoring. Per
value, a :class:`SegmentCounts` holds the requests and positive decisions
(known at scoring time, no labels needed) and, once labels join, the
confusion counts. Every count is a sum, so counts of any split of a window
merge (``+``) into the counts of the whole window.

The disparities are fairlearn's definitions (``fairlearn.metrics``, checked
against it in the tests): the demographic-parity difference (largest minus
smallest positive-decision rate) and ratio (smallest over largest, the
"disparate impact" ratio), the equal-opportunity difference (of true
positive rates) and the equalised-odds difference (the larger of the true-
and false-positive-rate differences). A value with no rows for a rate (no
labeled positives, say) has no such rate and takes no part in its disparity.

A disparity's size says nothing about chance: a segment value with 12
requests shows a rate 30 points off by luck alone. :func:`rate_disparity_p`
tests whether the rates differ at all, with Fisher's exact test of each
value against the rest (two-sided, capped mid-p) and Bonferroni's correction
over the values, so a window with no real difference is flagged in at most
about ``alpha`` of the windows whatever the segment sizes (measured in the
tests). An alert needs both: a disparity beyond its bound, and significance.

>>> c = SegmentCounts.fold(np.array(["a", "a", "b", None], dtype=object), np.array([True, False, True, True]))
>>> c.values, c.counts[:, N].tolist(), c.counts[:, POSITIVE].tolist()
(('(missing)', 'a', 'b'), [1, 2, 1], [1, 1, 1])
>>> round(disparities(c).demographic_parity_difference, 2)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.detectors.stats import fisher_two_sided

MISSING = "(missing)"  # the group of a null or absent segment value
OTHER = "(other)"  # values beyond the cap, pooled so a high-cardinality field stays bounded
#: columns of :attr:`SegmentCounts.counts`: requests, positive decisions, then labeled true/false positives and
#: negatives (the labeled rows are a subset of the requests: labels arrive later, for some)
N, POSITIVE, TP, FP, FN, TN = range(6)
WIDTH = 6
#: values a window sketch keeps per segment field (the rest pooled as OTHER): bounds the sketch record; audits,
#: metrics and the report show the most frequent ``bias_max_values`` of them
SKETCH_VALUES = 64


@dataclass(slots=True)
class SegmentCounts:
    """Counts per value of one segment field; ``counts[i]`` belongs to ``values[i]`` (sorted, unique)."""

    values: tuple[str, ...]
    counts: np.ndarray  # int64, shape (len(values), WIDTH)

    @staticmethod
    def empty() -> SegmentCounts:
        return SegmentCounts((), np.zeros((0, WIDTH), np.int64))

    @staticmethod
    def fold(values: np.ndarray, decisions: np.ndarray, nulls: np.ndarray | None = None, *,
             labels: np.ndarray | None = None) -> SegmentCounts:
        """Counts of one batch: each row's segment value, decision (positive?) and, optionally, true label.

        Vectorised: one conversion to fixed-width text and one ``np.unique``;
        nulls (``None`` or ``nulls``) count under :data:`MISSING`, never raise.
        """
        if len(values) == 0:
            return SegmentCounts.empty()
        found = _factorize(values, nulls)
        if found is None:
            uniq, codes = np.unique(segment_text(values, nulls), return_inverse=True)
            names = [group_name(u) for u in uniq.tolist()]  # a few distinct values: checked one by one
            if names != uniq.tolist():  # some values are no name: pool them
                uniq, merged = np.unique(np.asarray(names, dtype=object), return_inverse=True)
                codes = merged[codes]
        else:
            uniq, codes = found
        g = len(uniq)
        counts = np.zeros((g, WIDTH), np.int64)
        decided = decisions.astype(bool, copy=False)
        counts[:, N] = np.bincount(codes, minlength=g)
        counts[:, POSITIVE] = np.bincount(codes[decided], minlength=g)
        if labels is not None:
            truth = labels.astype(bool, copy=False)
            for col, mask in ((TP, decided & truth), (FP, decided & ~truth), (FN, ~decided & truth),
                              (TN, ~decided & ~truth)):
                counts[:, col] = np.bincount(codes[mask], minlength=g)
        return SegmentCounts(tuple(uniq.tolist()), counts)

    def __add__(self, other: SegmentCounts) -> SegmentCounts:
        if not other.values:
            return self
        if not self.values:
            return other
        if self.values == other.values:
            return SegmentCounts(self.values, self.counts + other.counts)
        merged = tuple(sorted(set(self.values) | set(other.values)))
        where = {v: i for i, v in enumerate(merged)}
        counts = np.zeros((len(merged), WIDTH), np.int64)
        for part in (self, other):
            counts[[where[v] for v in part.values]] += part.counts
        return SegmentCounts(merged, counts)

    def capped(self, limit: int) -> SegmentCounts:
        """At most ``limit`` values: the most frequent ``limit - 1`` and :data:`OTHER` for the rest (ties by name).

        Metrics and records stay bounded whatever the field's cardinality;
        :data:`MISSING` is a value like any other here.
        """
        if len(self.values) <= limit:
            return self
        order = sorted(range(len(self.values)), key=lambda i: (-int(self.counts[i, N]), self.values[i]))
        keep = sorted(i for i in order[:limit - 1] if self.values[i] != OTHER)
        rest = np.ones(len(self.values), dtype=bool)
        rest[keep] = False
        values = [self.values[i] for i in keep] + [OTHER]
        counts = np.vstack([self.counts[keep], self.counts[rest].sum(axis=0, keepdims=True)])
        order2 = np.argsort(np.array(values, dtype=str), kind="stable")
        return SegmentCounts(tuple(values[i] for i in order2.tolist()), counts[order2])

    @property
    def total(self) -> int:
        return int(self.counts[:, N].sum())

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "counts": self.counts.tolist()}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SegmentCounts:
        counts = np.asarray(d["counts"], dtype=np.int64).reshape(len(d["values"]), WIDTH)
        return SegmentCounts(tuple(str(v) for v in d["values"]), counts)


SEPARATOR = "\x1f"  # between a request's segment values on the scored record (unit separator: not in real values)


MAX_VALUE_CHARS = 200  # a segment value is a metric label and a sketch key: longer ones count under OTHER


def group_name(value: str) -> str:
    """The group a segment value counts under: itself when it can be a label, else MISSING (empty) or OTHER.

    Metric labels, sketches and logs take printable names of at most
    :data:`MAX_VALUE_CHARS` characters; a request may carry anything, and one
    odd value must cost only its own group, never the window's sketch.
    """
    if not value:
        return MISSING
    if len(value) > MAX_VALUE_CHARS or not value.isprintable():
        return OTHER
    return value


#: above this many distinct values in a batch, :func:`_factorize` leaves the batch to ``np.unique``
FACTORIZE_MAX_VALUES = 64


def _factorize(values: np.ndarray, nulls: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted group names, each row's index among them), as :meth:`SegmentCounts.fold`'s ``np.unique`` of the
    :func:`segment_text` would give, by hashing instead of sorting text: a segment field has a few values, and
    the sort cost ~0.35 µs a row. None for arrays that are not objects or have many distinct values."""
    if values.dtype != object or (nulls is not None and nulls.dtype != bool):
        return None
    if nulls is not None and nulls.any():  # a null row counts as missing whatever value it holds
        values = values.copy()
        values[nulls] = None
    rows = values.tolist()
    try:
        distinct = list(dict.fromkeys(rows))  # C-level hashing, in order of first appearance
    except TypeError:  # a value that cannot be hashed: text, as np.unique sees it
        return None
    if len(distinct) > FACTORIZE_MAX_VALUES or not all(v is None or type(v) is str for v in distinct):
        return None  # values equal but printed differently (1, 1.0, True) are one key here: text tells them apart
    # as numpy's fixed-width text has them: trailing NULs dropped, the separator replaced
    names = [MISSING if v is None else group_name(v.rstrip("\x00").replace(SEPARATOR, "\ufffd")) for v in distinct]
    final = sorted(set(names))
    at = {name: i for i, name in enumerate(final)}
    index = {v: at[name] for v, name in zip(distinct, names, strict=True)}
    codes = np.fromiter(map(index.__getitem__, rows), dtype=np.intp, count=len(rows))
    return np.asarray(final, dtype=object), codes


def segment_text(values: np.ndarray, nulls: np.ndarray | None = None) -> np.ndarray:
    """A segment column as fixed-width text, :data:`MISSING` where null: the group each row counts under."""
    missing = np.asarray(values == None, dtype=bool) if values.dtype == object else None  # noqa: E711
    if nulls is not None:
        missing = nulls if missing is None else missing | nulls
    text = values.astype(str)
    if np.strings.find(text, SEPARATOR).max(initial=-1) >= 0:  # it joins a row's values on the scored record
        text = np.strings.replace(text, SEPARATOR, "\ufffd")  # the replacement character stands in for it
    return np.where(missing, MISSING, text) if missing is not None and missing.any() else text


def join_values(columns: list[np.ndarray]) -> np.ndarray:
    """Each row's values of several segment columns (from :func:`segment_text`) as one string (object array)."""
    out = columns[0]
    for col in columns[1:]:
        out = np.strings.add(np.strings.add(out, SEPARATOR), col)
    return out.astype(object)


def split_values(joined: list[str | None], fields: int) -> list[np.ndarray]:
    """The inverse of :func:`join_values` for ``fields`` columns; a row that does not split so (or None) is
    :data:`MISSING` in every column, never an error (the record came from a topic)."""
    rows = [s.split(SEPARATOR) if s is not None else [] for s in joined]
    parts = [r if len(r) == fields else [MISSING] * fields for r in rows]
    return [np.array([r[i] for r in parts], dtype=object) for i in range(fields)]


@dataclass(frozen=True, slots=True)
class GroupRates:
    """One segment value's figures (NaN where the value has no row for the rate)."""

    value: str
    requests: int
    positive_rate: float
    labeled: int
    accuracy: float
    true_positive_rate: float
    false_positive_rate: float


@dataclass(frozen=True, slots=True)
class Disparities:
    """fairlearn's disparity figures over a segment's values (NaN when fewer than two values have the rate)."""

    demographic_parity_difference: float
    demographic_parity_ratio: float
    equal_opportunity_difference: float
    equalized_odds_difference: float


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def group_rates(c: SegmentCounts) -> list[GroupRates]:
    """Per value: requests, positive-decision rate, and with labels accuracy, TPR and FPR."""
    k = c.counts
    labeled = k[:, TP] + k[:, FP] + k[:, FN] + k[:, TN]
    selection = _ratio(k[:, POSITIVE], k[:, N])
    accuracy = _ratio(k[:, TP] + k[:, TN], labeled)
    tpr = _ratio(k[:, TP], k[:, TP] + k[:, FN])
    fpr = _ratio(k[:, FP], k[:, FP] + k[:, TN])
    return [GroupRates(v, int(k[i, N]), float(selection[i]), int(labeled[i]), float(accuracy[i]), float(tpr[i]),
                       float(fpr[i])) for i, v in enumerate(c.values)]


def _spread(rates: np.ndarray) -> float:
    known = rates[~np.isnan(rates)]
    return float(known.max() - known.min()) if len(known) >= 2 else math.nan


def disparities(c: SegmentCounts) -> Disparities:
    """The disparity figures of one window's segment counts."""
    k = c.counts
    selection = _ratio(k[:, POSITIVE], k[:, N])
    known = selection[~np.isnan(selection)]
    if len(known) >= 2:
        ratio = float(known.min() / known.max()) if known.max() > 0 else 1.0
    else:
        ratio = math.nan
    tpr = _ratio(k[:, TP], k[:, TP] + k[:, FN])
    fpr = _ratio(k[:, FP], k[:, FP] + k[:, TN])
    eo = _spread(tpr)
    fp = _spread(fpr)
    odds = math.nan if math.isnan(eo) or math.isnan(fp) else max(eo, fp)
    return Disparities(_spread(selection), ratio, eo, odds)


def rate_disparity_p(successes: np.ndarray, totals: np.ndarray) -> float:
    """P-value of "every value has the same rate": each value against the rest, Bonferroni over the values.

    Fisher's exact test (capped mid-p, two-sided as twice the smaller
    tail): exact for any sample size, so a value with a dozen rows only
    counts when its difference could not be luck. With two values both
    tests are the same one, so the correction factor is 1.
    """
    used = totals > 0
    x, n = successes[used].astype(np.int64), totals[used].astype(np.int64)
    g = len(n)
    if g < 2:
        return 1.0
    all_x, all_n = int(x.sum()), int(n.sum())
    if all_x == 0 or all_x == all_n:
        return 1.0  # every decision the same: no difference to find
    tests = 1 if g == 2 else g
    ps: list[float] = []
    for xi, ni in zip(x.tolist(), n.tolist(), strict=True):
        if g == 2 and ps:
            break
        ps.append(fisher_two_sided(xi, ni, all_x - xi, all_n - ni))
    return min(1.0, tests * min(ps))
