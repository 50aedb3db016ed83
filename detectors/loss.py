"""Regressors' quality before labels arrive: direct loss estimation (DLE) from the prediction alone.

NannyML's DLE trains a model of each row's loss on labeled reference data
and averages its output over a window of unlabeled rows. The quality
monitor sees predictions and outcomes, not features, so here the loss
model's only input is the prediction: on reference rows, binned by
prediction quantiles (like :class:`~driftline.detectors.estimate.Calibration`),
the mean absolute error and the mean squared error per bin. A window's
expected MAE is then the mean of its rows' bin |error|, its expected RMSE
the root of the mean of their bin squared error — both a function of the
window's bin counts, so windows merge by adding counts.

What it sees: covariate shift that moves predictions into a region where
the model errs more (or less), e.g. larger targets with larger errors. What
it cannot see: an error change driven by inputs that do not move the
prediction, and concept drift (the relation between inputs and target
changes). Predictions beyond the reference's range take its end bins'
error, so a shift far past that range is underestimated. The realised MAE,
when labels come, is the check: the gap between the two is itself a signal.

>>> rng = np.random.default_rng(1)
>>> def rows(n, shift):                       # the error's scale grows with the prediction
...     f = rng.normal(shift, 1, n)
...     return f, f + rng.normal(0, 1, n) * (0.3 + 1.5 / (1 + np.exp(-2 * f)))
>>> f0, y0 = rows(5000, 0.0)
>>> model = LossModel.fit(f0, y0)
>>> f, y = rows(5000, 1.0)                    # covariate shift into the high-error region
>>> est = model.estimate(f)
>>> [round(float(x), 2) for x in (np.abs(y0 - f0).mean(), est.mae, np.abs(y - f).mean())]
[0.83, 1.16, 1.15]
>>> [round(float(x), 2) for x in (est.rmse, np.sqrt(((y - f) ** 2).mean()))]
[1.51, 1.48]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PRIOR_ROWS = 1.0  # pseudo-rows of the overall mean in each bin's mean: a thin bin leans on the whole sample


@dataclass(frozen=True, slots=True)
class LossEstimate:
    """A window's expected error from its predictions alone (NaN for an empty window)."""

    mae: float
    rmse: float

    def items(self) -> list[tuple[str, float]]:
        """(metric name, value) pairs, the names the metrics and the dashboard use."""
        return [("mae", self.mae), ("rmse", self.rmse)]


@dataclass(frozen=True, slots=True)
class LossModel:
    """Prediction → expected absolute and squared error, by bins of equal reference count."""

    edges: np.ndarray  # inner bin edges over the prediction
    abs_error: np.ndarray  # expected |target − prediction| per bin
    sq_error: np.ndarray  # expected (target − prediction)² per bin

    @staticmethod
    def fit(predictions: np.ndarray, targets: np.ndarray, bins: int = 10, prior: float = PRIOR_ROWS) -> LossModel:
        """Per-bin mean errors of labeled rows, each shrunk to the overall mean by ``prior`` pseudo-rows."""
        f = np.asarray(predictions, dtype=np.float64)
        err = np.asarray(targets, dtype=np.float64) - f
        if len(f) == 0 or len(err) != len(f):
            raise ValueError(f"fit needs as many targets as predictions, at least one ({len(f)}, {len(err)})")
        edges = np.unique(np.quantile(f, np.linspace(0, 1, bins + 1)[1:-1]))
        idx = np.searchsorted(edges, f, side="right")
        counts = np.bincount(idx, minlength=len(edges) + 1)

        def shrunk(values: np.ndarray) -> np.ndarray:
            sums = np.bincount(idx, weights=values, minlength=len(edges) + 1)
            return (sums + prior * values.mean()) / (counts + prior)

        return LossModel(edges, shrunk(np.abs(err)), shrunk(err * err))

    def bins(self, predictions: np.ndarray) -> np.ndarray:
        """The bin of each prediction: what a window of unlabeled predictions counts."""
        return np.searchsorted(self.edges, np.asarray(predictions, dtype=np.float64), side="right")

    def of_counts(self, counts: np.ndarray) -> LossEstimate:
        """Expected MAE and RMSE of a window from its predictions' bin counts."""
        c = np.asarray(counts, dtype=np.float64)
        n = c.sum()
        if n == 0:
            return LossEstimate(float("nan"), float("nan"))
        return LossEstimate(float(c @ self.abs_error / n), math.sqrt(float(c @ self.sq_error / n)))

    def estimate(self, predictions: np.ndarray) -> LossEstimate:
        """Expected MAE and RMSE of a window of predictions."""
        return self.of_counts(np.bincount(self.bins(predictions), minlength=len(self.abs_error)))

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "abs_error": self.abs_error.tolist(),
                "sq_error": self.sq_error.tolist()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LossModel:
        """A loss model from :meth:`to_dict`; ``ValueError`` unless it is one (sorted finite edges, errors ≥ 0)."""
        for k in ("edges", "abs_error", "sq_error"):
            if not isinstance(d[k], list) or not all(type(x) in (int, float) for x in d[k]):
                raise ValueError(f"{k} must be a list of numbers")
        edges, mae, mse = (np.asarray(d[k], dtype=np.float64) for k in ("edges", "abs_error", "sq_error"))
        if edges.ndim != 1 or mae.shape != (len(edges) + 1,) or mse.shape != mae.shape:
            raise ValueError(f"{len(edges)} edges need {len(edges) + 1} errors per kind")
        if not (np.isfinite(edges).all() and (np.diff(edges) > 0).all()):
            raise ValueError("edges must be finite and increasing")
        if not (np.isfinite(mae).all() and np.isfinite(mse).all() and (mae >= 0).all() and (mse >= 0).all()):
            raise ValueError("expected errors must be finite and not negative")
        return LossModel(edges, mae, mse)
