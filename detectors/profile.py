"""Reference profile: what the training data looked like, binned for drift statistics.

For each numeric feature (and the model's score): PSI bins at reference
deciles, fine bins at up to 256 reference quantiles for the KS statistic, the
reference counts over both, mean, standard deviation, null rate and a capped
sample. For each categorical feature: the category counts. And a small
seeded sample of whole reference rows (:class:`JointRows`), which the drift
impact estimate scores through the model. Stored as ``profile.json`` next
to the model, in the model registry: it holds reference values (personal
ones too) and never goes on a topic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from driftline.detectors.multivariate import PcaReference

PSI_BINS = 10
FINE_BINS = 250  # a multiple of PSI_BINS: every PSI edge is also a fine edge
SAMPLE_CAP = 2000
JOINT_ROWS = 256  # reference rows kept whole: enough for a stable score distribution, a few ms per ONNX call


@dataclass(frozen=True, slots=True)
class NumericReference:
    """Binned reference distribution of one numeric column.

    ``edges`` and ``fine_edges`` are inner edges: a value ``v`` falls in bin
    ``searchsorted(edges, v, side="right")``, so there are ``len(edges) + 1``
    bins and values outside the reference range land in the end bins.
    """

    name: str
    edges: np.ndarray
    counts: np.ndarray
    fine_edges: np.ndarray
    fine_counts: np.ndarray
    mean: float
    std: float
    null_rate: float
    n: int
    sample: np.ndarray

    @staticmethod
    def build(name: str, values: np.ndarray, nulls: np.ndarray | None = None,
              rng: np.random.Generator | None = None) -> NumericReference:
        nulls = np.zeros(len(values), dtype=bool) if nulls is None else nulls
        present = values[~nulls & np.isfinite(values)]
        if len(present) == 0:
            raise ValueError(f"feature {name!r} has no finite reference values")
        # PSI edges are taken from the fine quantiles themselves, so each fine bin lies inside
        # one PSI bin and a window's PSI counts follow from its fine counts (one search per value).
        quantiles = np.quantile(present, np.linspace(0, 1, FINE_BINS + 1)[1:-1])
        step = FINE_BINS // PSI_BINS
        edges = np.unique(quantiles[step - 1 :: step])
        fine = np.unique(quantiles)
        rng = rng or np.random.default_rng(0)
        sample = present if len(present) <= SAMPLE_CAP else rng.choice(present, SAMPLE_CAP, replace=False)
        return NumericReference(
            name, edges, bin_counts(edges, present), fine, bin_counts(fine, present),
            float(present.mean()), float(present.std()), float(nulls.mean()) if len(nulls) else 0.0,
            int(len(present)), np.sort(sample),
        )

    @property
    def fine_to_psi(self) -> np.ndarray | None:
        """PSI bin of each fine bin, when the PSI edges are fine edges (profiles built here)."""
        if not np.isin(self.edges, self.fine_edges).all():
            return None
        lower = np.concatenate(([-np.inf], self.fine_edges))
        return np.searchsorted(self.edges, lower, side="right")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "numeric", "edges": self.edges.tolist(),
                "counts": self.counts.tolist(), "fine_edges": self.fine_edges.tolist(),
                "fine_counts": self.fine_counts.tolist(), "mean": self.mean, "std": self.std,
                "null_rate": self.null_rate, "n": self.n, "sample": self.sample.tolist()}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> NumericReference:
        return NumericReference(
            d["name"], np.asarray(d["edges"], dtype=np.float64), np.asarray(d["counts"], dtype=np.int64),
            np.asarray(d["fine_edges"], dtype=np.float64), np.asarray(d["fine_counts"], dtype=np.int64),
            float(d["mean"]), float(d["std"]), float(d["null_rate"]), int(d["n"]),
            np.asarray(d.get("sample", []), dtype=np.float64),
        )


@dataclass(frozen=True, slots=True)
class CategoricalReference:
    """Reference counts per category; the last count is for categories not in the list."""

    name: str
    categories: tuple[str, ...]
    counts: np.ndarray
    null_rate: float
    n: int

    @staticmethod
    def build(name: str, values: np.ndarray, categories: tuple[str, ...],
              nulls: np.ndarray | None = None) -> CategoricalReference:
        nulls = np.zeros(len(values), dtype=bool) if nulls is None else nulls
        counts = category_counts(categories, values[~nulls])
        return CategoricalReference(name, tuple(categories), counts,
                                    float(nulls.mean()) if len(nulls) else 0.0, int((~nulls).sum()))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "categorical", "categories": list(self.categories),
                "counts": self.counts.tolist(), "null_rate": self.null_rate, "n": self.n}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> CategoricalReference:
        return CategoricalReference(d["name"], tuple(d["categories"]), np.asarray(d["counts"], dtype=np.int64),
                                    float(d["null_rate"]), int(d["n"]))


Reference = NumericReference | CategoricalReference


@dataclass(frozen=True, slots=True)
class JointRows:
    """A seeded sample of whole reference rows, every feature of a row together, as the requests held them.

    Numeric columns are float64 with NaN where the request had no value;
    categorical columns are the category names. Kept in the request's
    fields, not in the model's matrix, because window sketches describe
    fields: a feature's values are swapped there, then encoded as the model
    reads them (matrix or named inputs) by :mod:`driftline.inference.model`.
    """

    columns: Mapping[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @staticmethod
    def build(columns: Mapping[str, np.ndarray], rng: np.random.Generator | None = None,
              cap: int = JOINT_ROWS) -> JointRows | None:
        """Up to ``cap`` rows drawn without replacement (seeded); None without columns or rows."""
        lengths = {len(v) for v in columns.values()}
        if not columns or lengths == {0}:
            return None
        if len(lengths) != 1:
            raise ValueError(f"joint rows: columns of different lengths {sorted(lengths)}")
        (n,) = lengths
        rng = rng or np.random.default_rng(0)
        take = np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))
        return JointRows({k: np.asarray(v)[take] for k, v in columns.items()})

    def to_dict(self) -> dict[str, Any]:
        def plain(v: np.ndarray) -> list[Any]:
            if v.dtype.kind == "f":
                return [None if not np.isfinite(x) else float(x) for x in v.tolist()]
            return [None if x is None else str(x) for x in v.tolist()]

        return {"columns": {k: plain(np.asarray(v)) for k, v in self.columns.items()}}

    @staticmethod
    def from_dict(d: Mapping[str, Any], features: tuple[Reference, ...]) -> JointRows:
        """Checked against the profile's features: ValueError unless each has one column of equal length."""
        cols = d["columns"]
        names = [f.name for f in features]
        if not isinstance(cols, Mapping) or set(cols) != set(names):
            raise ValueError("rows: one column per feature of the profile")
        out: dict[str, np.ndarray] = {}
        for f in features:
            values = cols[f.name]
            if not isinstance(values, list) or len(values) > JOINT_ROWS:
                raise ValueError(f"rows: column {f.name!r} must be a list of at most {JOINT_ROWS} values")
            if isinstance(f, NumericReference):
                out[f.name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            else:
                out[f.name] = np.array([None if v is None else str(v) for v in values], dtype=object)
        if len({len(v) for v in out.values()}) != 1:
            raise ValueError("rows: columns of different lengths")
        return JointRows(out)


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    """The reference of every monitored feature and of the model's score.

    ``personal``: features that come from personal fields (the model's
    marks, not stored with the profile): their bins are shown by number,
    never by their values (edges or category names), in alerts and reports.
    """

    features: tuple[Reference, ...]
    score: NumericReference
    personal: frozenset[str] = frozenset()
    #: principal components of the numeric features, for the multivariate test (profiles built before: None)
    multivariate: PcaReference | None = None
    #: whole reference rows, for the drift impact estimate (profiles built before: None, drift ranked by PSI)
    rows: JointRows | None = None

    @property
    def monitored(self) -> tuple[Reference, ...]:
        """Every column a window sketch holds: the features, then the multivariate reconstruction error."""
        return self.features if self.multivariate is None else (*self.features, self.multivariate.errors)

    def to_json(self) -> str:
        d: dict[str, Any] = {"features": [f.to_dict() for f in self.features], "score": self.score.to_dict()}
        if self.multivariate is not None:
            d["multivariate"] = self.multivariate.to_dict()
        if self.rows is not None:
            d["rows"] = self.rows.to_dict()
        return json.dumps(d)

    @staticmethod
    def from_json(text: str) -> ReferenceProfile:
        d = json.loads(text)
        feats: list[Reference] = [
            NumericReference.from_dict(f) if f["kind"] == "numeric" else CategoricalReference.from_dict(f)
            for f in d["features"]
        ]
        from driftline.detectors.multivariate import PcaReference

        pca = None
        if d.get("multivariate"):
            numeric = {f.name for f in feats if isinstance(f, NumericReference)}
            try:
                pca = PcaReference.from_dict(d["multivariate"], numeric)
            except (ValueError, KeyError, TypeError) as exc:  # the univariate tests still run without it
                logging.getLogger(__name__).warning("the profile's multivariate section is not usable (%s): no "
                                                    "multivariate test for it; rebuild the profile", exc)
        rows = None
        if d.get("rows"):
            try:
                rows = JointRows.from_dict(d["rows"], tuple(feats))
            except Exception as exc:  # noqa: BLE001 - drift is still tested, ranked by PSI
                # the error's type only: its text may hold a row's value, and a row may be personal
                logging.getLogger(__name__).warning("the profile's rows are not usable (%s): drifted features are "
                                                    "ranked by PSI, not by their effect on the score; rebuild the "
                                                    "profile", type(exc).__name__)
        return ReferenceProfile(tuple(feats), NumericReference.from_dict(d["score"]), multivariate=pca, rows=rows)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @staticmethod
    def load(path: Path) -> ReferenceProfile:
        return ReferenceProfile.from_json(path.read_text())


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of ``values`` over the bins the inner ``edges`` make (vectorised)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1).astype(np.int64)


def category_counts(categories: tuple[str, ...], values: np.ndarray) -> np.ndarray:
    """Counts per category, plus one last count for anything else."""
    lut = {c: i for i, c in enumerate(categories)}
    other = len(categories)
    idx = np.fromiter((lut.get(v, other) for v in values), dtype=np.int64, count=len(values))
    return np.bincount(idx, minlength=other + 1).astype(np.int64)
