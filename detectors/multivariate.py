"""Multivariate drift: how well the reference's principal components still reconstruct each row.

Univariate tests see each feature's distribution alone; two features whose
correlation flips sign with unchanged marginals pass every one of them. So
the profile also keeps the principal components of the standardised
numeric features (enough to explain ``VARIANCE_KEPT`` of the variance, as
NannyML does), and every row of a window gets its reconstruction error:
the distance between the row and its projection onto those components. A
joint change moves rows off the reference's subspace and the errors up.

The errors of the reference rows are binned like any numeric column, so
the window's errors are tested with the same two-sample test against the
same kind of reference, at the same ``drift_alpha``: calibration comes for
free. A row with a null (or non-finite value) in any of these features has
no reconstruction error (imputing it would move a correlated row off the
subspace, turning a null-rate change into "joint drift"): it counts as a
null of the multivariate column, which the null-rate tests already watch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.detectors.profile import NumericReference

MULTIVARIATE = "__multivariate__"
VARIANCE_KEPT = 0.65
FIT_ROWS = 50_000  # rows the components are fitted on (a sample beyond that): SVD cost, not accuracy
_MAX_ERROR = 1e12  # an error past this (a value ~1e154 times its scale would overflow) is this, not inf


@dataclass(frozen=True, slots=True)
class PcaReference:
    """Principal components of the reference's numeric features and the reference rows' reconstruction errors."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # k × d, orthonormal rows
    errors: NumericReference

    @staticmethod
    def build(columns: Mapping[str, np.ndarray], rng: np.random.Generator | None = None) -> PcaReference | None:
        """From the numeric reference columns (NaN where null); None with fewer than two usable columns."""
        finite = {n: np.where(np.isfinite(v), v, np.nan) for n, v in
                  ((n, np.asarray(v, dtype=np.float64)) for n, v in columns.items())}
        names = tuple(n for n, v in finite.items() if np.isfinite(v).sum() > 1 and np.nanstd(v) > 0)
        if len(names) < 2:
            return None
        x = np.column_stack([finite[n] for n in names])
        x = x[np.isfinite(x).all(axis=1)]  # complete rows only, as in the windows
        if len(x) < 2:
            return None
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        if not (scale > 0).all():
            return None
        z = _standardise(x, mean, scale)
        rng = rng or np.random.default_rng(0)
        fit = z if len(z) <= FIT_ROWS else z[rng.choice(len(z), FIT_ROWS, replace=False)]
        _, s, vt = np.linalg.svd(fit - fit.mean(axis=0), full_matrices=False)
        share = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
        k = min(int(np.searchsorted(share, VARIANCE_KEPT) + 1), len(names) - 1)
        components = vt[:k].copy()
        return PcaReference(names, mean, scale, components,
                            NumericReference.build(MULTIVARIATE, _error(z, components), rng=rng))

    def reconstruction_errors(self, columns: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray | None]
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's reconstruction error (vectorised: one matrix product per batch), and which rows have none
        (a null or non-finite value in one of the features)."""
        x = np.column_stack([_with_nulls(columns[n], nulls.get(n)) for n in self.names])
        incomplete = ~np.isfinite(x).all(axis=1)
        return self.error(_standardise(x, self.mean, self.scale)), incomplete

    def error(self, z: np.ndarray) -> np.ndarray:
        return _error(z, self.components)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "components": self.components.tolist(), "errors": self.errors.to_dict()}

    @staticmethod
    def from_dict(d: Mapping[str, Any], numeric: frozenset[str] | set[str]) -> PcaReference:
        """Checked against the profile's ``numeric`` feature names: ValueError unless it is a usable reference."""
        names = tuple(str(n) for n in d["names"])
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        components = np.asarray(d["components"], dtype=np.float64)
        errors = NumericReference.from_dict(d["errors"])
        dim = len(names)
        if dim < 2 or len(set(names)) != dim or not set(names) <= numeric:
            raise ValueError("multivariate: names must be two or more distinct numeric features of the profile")
        if mean.shape != (dim,) or scale.shape != (dim,) or not (np.isfinite(mean).all() and (scale > 0).all()
                                                                and np.isfinite(scale).all()):
            raise ValueError("multivariate: mean and scale need one finite value per name, scale > 0")
        if components.ndim != 2 or components.shape[1] != dim or not 1 <= components.shape[0] < dim \
                or not np.isfinite(components).all() \
                or not np.allclose(components @ components.T, np.eye(components.shape[0]), atol=1e-6):
            raise ValueError("multivariate: components must be 1 to d-1 orthonormal rows of d values")
        if errors.name != MULTIVARIATE or len(errors.counts) != len(errors.edges) + 1:
            raise ValueError(f"multivariate: errors must be the {MULTIVARIATE} reference")
        return PcaReference(names, mean, scale, components, errors)


def _error(z: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Distance of each standardised row from its projection onto the components (capped, never inf)."""
    projected = (z @ components.T) @ components
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.sqrt(np.sum((z - projected) ** 2, axis=1))
    return np.minimum(np.nan_to_num(out, nan=_MAX_ERROR, posinf=_MAX_ERROR), _MAX_ERROR)


def _with_nulls(values: np.ndarray, nulls: np.ndarray | None) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if nulls is not None and nulls.any():
        out = out.copy()
        out[nulls] = np.nan
    return out


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / np.where(scale > 0, scale, 1.0)
    return np.where(np.isfinite(z), z, 0.0)  # a null (or non-finite) value sits at the mean: no error from it
