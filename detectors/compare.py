"""Is the challenger better than the champion? Paired tests on the same labeled requests.

Both versions scored the same requests (the challenger in shadow), so the
comparison is paired, which removes the request-to-request noise:

- ``log_loss`` (the default; a proper scoring rule, sensitive with rare
  positives where accuracy barely moves): a one-sided paired t-test on the
  per-request loss differences;
- ``accuracy``: McNemar's exact test on the requests where exactly one of
  the two decisions is right.

The challenger wins when its improvement is at least ``margin`` and the
test's p-value is below ``alpha`` — and it loses none of the guardrail
metrics (:func:`guardrails`): a classifier's metrics at its threshold that
the business runs on (recall, F1, precision, accuracy, or the expected cost
of its errors). A model that never flags a positive can improve log loss on
rare positives; it must not win on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftline.detectors.stats import normal_sf

_EPS = 1e-15


def log_losses(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels).astype(bool)
    return -np.where(y, np.log(p), np.log1p(-p))


def _binom_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exact."""
    if k <= 0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def compare(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, *, metric: str = "log_loss",
            threshold: float = 0.5, margin: float = 0.0, alpha: float = 0.01) -> dict[str, float | bool | str]:
    """The verdict and its numbers: champion and challenger values, improvement, p-value, better."""
    y = np.asarray(labels).astype(bool)
    n = len(y)
    if metric == "log_loss":
        a, b = log_losses(y, champion), log_losses(y, challenger)
        diff = a - b  # positive: the challenger loses less
        sd = float(diff.std(ddof=1)) if n > 1 else 0.0
        if sd == 0.0:
            p = 0.0 if diff.mean() > 0 else 1.0
        else:
            p = float(normal_sf(float(diff.mean()) / (sd / math.sqrt(n))))  # n is hundreds: the t is normal
        champ, chal, gain = float(a.mean()), float(b.mean()), float(diff.mean())
    elif metric == "accuracy":
        ra = (np.asarray(champion) >= threshold) == y
        rb = (np.asarray(challenger) >= threshold) == y
        only_b, only_a = int((rb & ~ra).sum()), int((ra & ~rb).sum())
        p = _binom_sf(only_b, only_a + only_b) if only_a + only_b else 1.0
        champ, chal = float(ra.mean()), float(rb.mean())
        gain = chal - champ
    else:
        raise ValueError(f"metric must be log_loss or accuracy, not {metric!r}")
    return {"metric": metric, "n": n, "champion": champ, "challenger": chal, "improvement": gain, "p_value": p,
            "better": bool(gain >= margin and p < alpha)}


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float, *, cost_fp: float = 1.0,
                 cost_fn: float = 1.0) -> dict[str, float]:
    """Decision metrics at ``threshold``: accuracy, precision, recall, F1 (0 where undefined, as scikit-learn's
    ``zero_division=0``) and ``cost``, the mean cost per request of the false positives and negatives."""
    y = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    fn, tn = int((~flagged & y).sum()), int((~flagged & ~y).sum())
    n = max(1, len(y))
    return {
        "accuracy": (tp + tn) / n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "cost": (cost_fp * fp + cost_fn * fn) / n,
    }


@dataclass(frozen=True, slots=True)
class Guardrail:
    """One guardrail metric on the paired requests: held unless the challenger is worse beyond the tolerance."""

    metric: str
    champion: float
    challenger: float
    held: bool

    def __str__(self) -> str:
        return f"{self.metric} {self.champion:.4f} vs {self.challenger:.4f}"


def guardrails(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, metrics: Sequence[str], *,
               threshold: float, tolerance: float, cost_fp: float = 1.0, cost_fn: float = 1.0,
               challenger_threshold: float | None = None) -> list[Guardrail]:
    """Each metric of ``metrics`` for both versions on the same requests, and whether the challenger kept it.

    Each version decides at its own threshold (``challenger_threshold``, by
    default the champion's). Higher is better for all but ``cost``; a
    challenger keeps a metric when it is at most ``tolerance`` below the
    champion's (absolute), or, for cost, at most ``tolerance`` above it (relative).
    """
    a = at_threshold(labels, champion, threshold, cost_fp=cost_fp, cost_fn=cost_fn)
    b = at_threshold(labels, challenger, threshold if challenger_threshold is None else challenger_threshold,
                     cost_fp=cost_fp, cost_fn=cost_fn)
    out = []
    for m in metrics:
        if m not in a:
            raise ValueError(f"guardrail metric must be one of {', '.join(a)}, not {m!r}")
        held = b[m] <= a[m] * (1 + tolerance) + 1e-12 if m == "cost" else b[m] >= a[m] - tolerance - 1e-12
        out.append(Guardrail(m, a[m], b[m], bool(held)))
    return out


def best_threshold(labels: np.ndarray, scores: np.ndarray, *, metric: str = "f1", cost_fp: float = 1.0,
                   cost_fn: float = 1.0) -> float:
    """The decision threshold that maximises ``metric`` (minimises ``cost``) on these labeled scores.

    A model trained on rare positives is calibrated, so its scores seldom reach
    0.5: at the champion's threshold it would never flag. The candidates are
    the scores themselves (every distinct decision); ties go to the higher threshold.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # flag everything down to each distinct score
    tp, fp, cut = tp[last], fp[last], s[last]
    fn = int(y.sum()) - tp
    tn = len(y) - int(y.sum()) - fp
    if metric == "cost":
        value = -(cost_fp * fp + cost_fn * fn)
    elif metric == "f1":
        value = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(tp)), where=(2 * tp + fp + fn) > 0)
    elif metric == "accuracy":
        value = (tp + tn) / max(1, len(y))
    else:
        raise ValueError(f"a threshold is chosen for f1, accuracy or cost, not {metric!r}")
    return float(cut[int(np.argmax(value))])
