"""Global importance from explanations: mean |attribution| per feature per window, and how far it moved.

A window's importance is each feature's mean absolute attribution over
the requests explained in it (in the explanations' link units). Its
*shift* is the total variation distance between the window's importance
shares (each feature's share of the total) and the reference's: the share
of the model's attention that moved between features, 0 (the same
profile) to 1 (disjoint). The reference is the version's own background
explained against itself (the reference rows' mean |attribution|), so a
shift says the live requests make the model lean on other features than
the reference data did: data drift in the features the model uses, seen
through the model. Shares, not raw means, are compared, so a window whose
attributions all grow alike (more extreme requests) does not count as a
shift; the raw means are reported beside it. The Spearman correlation of
the two importance vectors says whether the *order* of the features changed.
Windows are mergeable (sums and counts), so per-worker windows combine
into the answer of one big window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class ImportanceWindow:
    """Sums of |attribution| per feature over a window's explained requests (mergeable)."""

    features: tuple[str, ...]
    n: int
    abs_sum: np.ndarray

    @staticmethod
    def empty(features: Sequence[str]) -> ImportanceWindow:
        return ImportanceWindow(tuple(features), 0, np.zeros(len(features)))

    def add(self, phi: np.ndarray) -> None:
        """Fold a batch of attributions (rows × features)."""
        phi = np.asarray(phi, dtype=np.float64)
        if phi.ndim != 2 or phi.shape[1] != len(self.features):
            raise ValueError(f"attributions of shape {phi.shape}, not (n, {len(self.features)})")
        self.n += len(phi)
        self.abs_sum += np.abs(phi).sum(axis=0)

    def __add__(self, other: ImportanceWindow) -> ImportanceWindow:
        if other.features != self.features:
            raise ValueError("windows of different feature lists do not merge")
        return ImportanceWindow(self.features, self.n + other.n, self.abs_sum + other.abs_sum)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / self.n if self.n else np.zeros(len(self.features))


def shares(importance: np.ndarray) -> np.ndarray:
    """Each feature's share of the total importance (uniform when all are 0: nothing to tell them apart)."""
    v = np.asarray(importance, dtype=np.float64)
    total = v.sum()
    return v / total if total > 0 else np.full(len(v), 1.0 / max(len(v), 1))


def importance_shift(reference: np.ndarray, window: np.ndarray) -> float:
    """Total variation distance between two importance vectors' shares, in [0, 1].

    >>> importance_shift(np.array([3.0, 1.0]), np.array([6.0, 2.0]))
    0.0
    >>> importance_shift(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    1.0
    """
    return float(0.5 * np.abs(shares(reference) - shares(window)).sum())


def rank_correlation(reference: np.ndarray, window: np.ndarray) -> float:
    """Spearman's correlation of two importance vectors (ties share their mean rank); 1 with fewer than 2 features.

    >>> rank_correlation(np.array([3.0, 2.0, 1.0]), np.array([0.3, 0.2, 0.1]))
    1.0
    >>> rank_correlation(np.array([3.0, 2.0, 1.0]), np.array([0.1, 0.2, 0.3]))
    -1.0
    """
    if len(reference) < 2:
        return 1.0
    a, b = _ranks(np.asarray(reference, dtype=np.float64)), _ranks(np.asarray(window, dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 1.0


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):  # ties: their mean rank (a handful of features: a loop over distinct values)
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks
