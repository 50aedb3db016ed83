"""Model quality from labels, as mergeable counts (per window, per version and variant).

Like the drift sketches, every field is a sum, so the quality of a window
split over workers or partitions merges into the quality of the whole
window. Classifiers keep the confusion counts at the decision threshold and
the summed log loss; regressors keep the summed absolute and squared errors.

>>> q = QualitySketch.of_classifier(np.array([1, 0, 1, 1]), np.array([0.9, 0.2, 0.4, 0.8]), threshold=0.5)
>>> round(q.accuracy, 2), round(q.recall, 3), round(q.f1, 2)
(0.75, 0.667, 0.8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-15  # scikit-learn's clip for log loss


@dataclass(slots=True)
class QualitySketch:
    n: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    log_loss_sum: float = 0.0
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0

    @staticmethod
    def of_classifier(labels: np.ndarray, scores: np.ndarray, threshold: float) -> QualitySketch:
        """``labels`` 0/1, ``scores`` the positive-class probability, decided at ``threshold``."""
        y = np.asarray(labels).astype(bool)
        p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
        pred = p >= threshold
        loss = -np.where(y, np.log(p), np.log1p(-p))
        return QualitySketch(n=len(y), tp=int((pred & y).sum()), fp=int((pred & ~y).sum()),
                             tn=int((~pred & ~y).sum()), fn=int((~pred & y).sum()), log_loss_sum=float(loss.sum()))

    @staticmethod
    def of_regressor(targets: np.ndarray, predictions: np.ndarray) -> QualitySketch:
        err = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
        return QualitySketch(n=len(err), abs_err_sum=float(np.abs(err).sum()), sq_err_sum=float(np.dot(err, err)))

    def add_decision(self, truth: bool, score: float, threshold: float) -> bool:
        """Fold one labeled classification (plain arithmetic: labels arrive one at a time); True if it was wrong."""
        decided = score >= threshold
        self.n += 1
        if decided:
            self.tp, self.fp = self.tp + truth, self.fp + (not truth)
        else:
            self.fn, self.tn = self.fn + truth, self.tn + (not truth)
        p = min(max(score, _EPS), 1 - _EPS)
        self.log_loss_sum -= math.log(p if truth else 1 - p)
        return decided != truth

    def add_error(self, target: float, prediction: float) -> float:
        """Fold one labeled regression; returns the absolute error."""
        err = prediction - target
        self.n += 1
        self.abs_err_sum += abs(err)
        self.sq_err_sum += err * err
        return abs(err)

    def __add__(self, other: QualitySketch) -> QualitySketch:
        return QualitySketch(self.n + other.n, self.tp + other.tp, self.fp + other.fp, self.tn + other.tn,
                             self.fn + other.fn, self.log_loss_sum + other.log_loss_sum,
                             self.abs_err_sum + other.abs_err_sum, self.sq_err_sum + other.sq_err_sum)

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else math.nan

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 0.0

    @property
    def log_loss(self) -> float:
        return self.log_loss_sum / self.n if self.n else math.nan

    @property
    def mae(self) -> float:
        return self.abs_err_sum / self.n if self.n else math.nan

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sq_err_sum / self.n) if self.n else math.nan

    def metrics(self, task: str) -> dict[str, float]:
        if task == "regression":
            return {"mae": self.mae, "rmse": self.rmse}
        return {"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "log_loss": self.log_loss}

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                "log_loss_sum": self.log_loss_sum, "abs_err_sum": self.abs_err_sum, "sq_err_sum": self.sq_err_sum}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> QualitySketch:
        return QualitySketch(int(d["n"]), int(d["tp"]), int(d["fp"]), int(d["tn"]), int(d["fn"]),
                             float(d["log_loss_sum"]), float(d["abs_err_sum"]), float(d["sq_err_sum"]))


def accuracy_drop(reference: float, current: QualitySketch, alpha: float) -> tuple[float, float]:
    """One-sided test that accuracy fell below ``reference``: (p-value, the accuracy below which p < alpha).

    A binomial test with the normal approximation, like the null-rate test:
    sample-size aware, so a small labeled window does not raise an alarm on noise.
    """
    from driftline.detectors.stats import normal_isf, normal_sf

    n = current.n
    if n == 0:
        return 1.0, math.nan
    p0 = min(max(reference, 1e-9), 1 - 1e-9)
    se = math.sqrt(p0 * (1 - p0) / n)
    z = (p0 - current.accuracy) / se
    return float(normal_sf(z)), p0 - float(normal_isf(alpha)) * se
