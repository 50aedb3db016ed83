"""Is the challenger better than the champion? Paired tests on the same labeled requests.

Both versions scored the same requests (the challenger in shadow), so the
comparison is paired, which removes the request-to-request noise:

- ``log_loss`` (the default; a proper scoring rule, sensitive with rare
  positives where accuracy barely moves): a one-sided paired t-test on the
  per-request loss differences;
- ``accuracy``: McNemar's exact test on the requests where exactly one of
  the two decisions is right.

The challenger wins when its improvement is at least ``margin`` and the
test's p-value is below ``alpha``.
"""

from __future__ import annotations

import math

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
