"""Quality before labels arrive: confidence-based performance estimation (CBPE) for binary classifiers.

If the scores are calibrated probabilities, a row decided positive is right
with probability p and a row decided negative with probability 1 − p, so a
window's expected confusion counts — and from them accuracy and F1 — follow
from the scores alone. Models are rarely calibrated, so a calibration map
is fitted on reference data with labels (histogram binning on score
quantiles: the observed positive rate per bin) and applied first. The
estimate holds while the relation between inputs and labels holds (no
concept drift); when labels come, the gap between estimate and truth is
itself a signal.

>>> rng = np.random.default_rng(1)
>>> p = rng.random(20000); y = rng.random(20000) < p          # calibrated by construction
>>> cal = Calibration.fit(p, y)
>>> est = estimate(cal.apply(p), threshold=0.5)
>>> bool(abs(est.accuracy - ((p >= 0.5) == y).mean()) < 0.01)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Calibration:
    """Score → probability by bins of equal reference count."""

    edges: np.ndarray  # inner bin edges over the score
    rates: np.ndarray  # observed positive rate per bin

    @staticmethod
    def fit(scores: np.ndarray, labels: np.ndarray, bins: int = 20) -> Calibration:
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels).astype(np.float64)
        edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)[1:-1]))
        idx = np.searchsorted(edges, s, side="right")
        counts = np.bincount(idx, minlength=len(edges) + 1)
        positives = np.bincount(idx, weights=y, minlength=len(edges) + 1)
        rates = (positives + 0.5) / (counts + 1.0)  # Jeffreys-style smoothing for thin bins
        return Calibration(edges, rates)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return self.rates[np.searchsorted(self.edges, np.asarray(scores, dtype=np.float64), side="right")]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "rates": self.rates.tolist()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Calibration:
        return Calibration(np.asarray(d["edges"], dtype=np.float64), np.asarray(d["rates"], dtype=np.float64))


@dataclass(frozen=True, slots=True)
class Estimate:
    """A window's expected quality from its scores alone (NaN for an empty window)."""

    accuracy: float
    precision: float
    recall: float
    f1: float

    def items(self) -> list[tuple[str, float]]:
        """(metric name, value) pairs, the names the metrics and the dashboard use."""
        return [("accuracy", self.accuracy), ("precision", self.precision), ("recall", self.recall),
                ("f1", self.f1)]


def estimate(probabilities: np.ndarray, threshold: float) -> Estimate:
    """Expected accuracy, precision, recall and F1 of a window from calibrated probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, nan)
    pos = p >= threshold
    tp, fp = float(p[pos].sum()), float((1 - p[pos]).sum())
    fn, tn = float(p[~pos].sum()), float((1 - p[~pos]).sum())
    return Estimate(
        accuracy=(tp + tn) / len(p),
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    )
