"""Mergeable window sketches: what a window of live data looked like, in reference bins.

A sketch holds, per monitored column, the counts over the reference's PSI
bins and fine KS bins (or its category counts), plus count, sum, sum of
squares and nulls; and for the whole window the message and dead-letter
counts, how many request ids were checked for repeats and repeated, and the
requests and positive decisions per value of each segment field (the
manifest's ``segments``, for the bias audit: :mod:`driftline.detectors.fairness`).
Every field is a sum, so merging is element-wise addition: merging
the sketches of any split of a window (partitions, workers) gives exactly
the sketch of the whole window (associative and commutative; tested).

KS from fine bins: the statistic is evaluated at the fine edges only, so it
can be below the exact two-sample statistic by at most the largest fine
bin's share of the data (about 1/256 of the reference with 256 quantile
bins); the test therefore errs on the side of fewer alarms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.detectors.fairness import SegmentCounts
from driftline.detectors.profile import (
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
    bin_counts,
    category_counts,
)


@dataclass(slots=True)
class ColumnSketch:
    """One column of one window."""

    counts: np.ndarray
    fine: np.ndarray
    n: int = 0
    nulls: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def __add__(self, other: ColumnSketch) -> ColumnSketch:
        return ColumnSketch(self.counts + other.counts, self.fine + other.fine, self.n + other.n,
                            self.nulls + other.nulls, self.total + other.total, self.total_sq + other.total_sq)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "fine": self.fine.tolist(), "n": self.n, "nulls": self.nulls,
                "sum": self.total, "sum_sq": self.total_sq}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ColumnSketch:
        return ColumnSketch(np.asarray(d["counts"], dtype=np.int64), np.asarray(d["fine"], dtype=np.int64),
                            int(d["n"]), int(d["nulls"]), float(d["sum"]), float(d["sum_sq"]))


def empty_column(ref: NumericReference | CategoricalReference) -> ColumnSketch:
    if isinstance(ref, NumericReference):
        return ColumnSketch(np.zeros(len(ref.counts), np.int64), np.zeros(len(ref.fine_counts), np.int64))
    return ColumnSketch(np.zeros(len(ref.counts), np.int64), np.zeros(0, np.int64))


def fold_numeric(ref: NumericReference, values: np.ndarray, nulls: np.ndarray | None = None,
                 fine_to_psi: np.ndarray | None = None) -> ColumnSketch:
    """The sketch of one batch of a numeric column (vectorised).

    With ``fine_to_psi`` (:attr:`NumericReference.fine_to_psi`) the PSI
    counts are summed from the fine counts: one binary search per value.
    """
    finite = np.isfinite(values)
    keep = finite if nulls is None else finite & ~nulls
    present = values if keep.all() else values[keep]
    fine = bin_counts(ref.fine_edges, present)
    if fine_to_psi is not None:
        counts = np.bincount(fine_to_psi, weights=fine, minlength=len(ref.counts)).astype(np.int64)
    else:
        counts = bin_counts(ref.edges, present)
    return ColumnSketch(counts, fine, int(len(present)), int(len(values) - len(present)), float(present.sum()),
                        float(np.dot(present, present)))


def fold_categorical(ref: CategoricalReference, values: np.ndarray, nulls: np.ndarray | None = None) -> ColumnSketch:
    missing = np.zeros(len(values), dtype=bool) if nulls is None else nulls
    present = values[~missing]
    return ColumnSketch(category_counts(ref.categories, present), np.zeros(0, np.int64), int(len(present)),
                        int(missing.sum()))


def fold_codes(ref: CategoricalReference, codes: np.ndarray, nulls: np.ndarray | None = None) -> ColumnSketch:
    """Like :func:`fold_categorical`, from category indices (-1: not a reference category)."""
    missing = np.zeros(len(codes), dtype=bool) if nulls is None else nulls
    present = codes[~missing]
    other = len(ref.categories)
    counts = np.bincount(np.where(present < 0, other, present), minlength=other + 1).astype(np.int64)
    return ColumnSketch(counts, np.zeros(0, np.int64), int(len(present)), int(missing.sum()))


@dataclass(slots=True)
class WindowSketch:
    """All monitored columns of one (model, window), mergeable with ``+``."""

    model: str
    version: str
    start_ms: int
    end_ms: int
    columns: dict[str, ColumnSketch]
    score: ColumnSketch
    messages: int = 0
    dead_letters: int = 0
    contributors: frozenset[str] = field(default_factory=frozenset)
    ids: int = 0  # scored requests whose id was checked for a repeat (all, below the worker's memory cap)
    duplicates: int = 0  # of those, requests whose id came before (this window or the last, on this worker)
    #: per segment field, requests and positive decisions per value (absent in sketches written before segments)
    segments: dict[str, SegmentCounts] = field(default_factory=dict)

    @staticmethod
    def empty(profile: ReferenceProfile, model: str, version: str, start_ms: int, end_ms: int,
              contributor: str = "") -> WindowSketch:
        return WindowSketch(model, version, start_ms, end_ms, {f.name: empty_column(f) for f in profile.monitored},
                            empty_column(profile.score), contributors=frozenset({contributor} if contributor else ()))

    def fold(self, profile: ReferenceProfile, columns: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray],
             scores: np.ndarray, messages: int, dead_letters: int, rows: np.ndarray | None = None,
             maps: Mapping[str, np.ndarray] | None = None, codes: Mapping[str, np.ndarray] | None = None) -> None:
        """Add one batch: the valid rows' columns and scores, and the batch's message counts.

        ``rows`` selects the valid rows of ``columns``/``nulls`` (all rows when None),
        so only the monitored columns are ever copied; ``maps`` is :func:`fine_maps`
        of the profile, computed once by the caller; ``codes`` may give, per
        categorical column, each row's index into the reference's categories
        (-1 for anything else), which saves looking the strings up again.
        """
        maps = maps if maps is not None else fine_maps(profile)
        def pick(column: np.ndarray) -> np.ndarray:
            return column if rows is None else column[rows]

        for ref in profile.features:
            mask = nulls.get(ref.name)
            mask = pick(mask) if mask is not None else None
            if isinstance(ref, NumericReference):
                values = pick(columns[ref.name]).astype(np.float64, copy=False)
                part = fold_numeric(ref, values, mask, maps.get(ref.name))
            elif codes is not None and ref.name in codes:
                part = fold_codes(ref, pick(codes[ref.name]), mask)
            else:
                part = fold_categorical(ref, pick(columns[ref.name]), mask)
            if ref.name in profile.personal:  # a window of one request would carry its value in its sum
                part.total = part.total_sq = 0.0
            self.columns[ref.name] = self.columns[ref.name] + part
        pca = profile.multivariate
        if pca is not None and len(scores):  # the rows' joint position: one matrix product per batch
            picked = {n: pick(columns[n]) for n in pca.names}
            masks = {n: pick(m) for n in pca.names if (m := nulls.get(n)) is not None}
            errors, incomplete = pca.reconstruction_errors(picked, masks)
            part = fold_numeric(pca.errors, errors, incomplete, maps.get(pca.errors.name))
            if profile.personal & set(pca.names):  # its sum, with the others', would give a personal value back
                part.total = part.total_sq = 0.0
            self.columns[pca.errors.name] = self.columns[pca.errors.name] + part
        self.score = self.score + fold_numeric(profile.score, scores, None, maps.get(SCORE_KEY))
        self.messages += messages
        self.dead_letters += dead_letters

    def __add__(self, other: WindowSketch) -> WindowSketch:
        if (self.model, self.start_ms, self.end_ms) != (other.model, other.start_ms, other.end_ms):
            raise ValueError("only sketches of the same model and window merge")
        return WindowSketch(
            self.model, self.version, self.start_ms, self.end_ms,
            {k: v + other.columns[k] for k, v in self.columns.items()}, self.score + other.score,
            self.messages + other.messages, self.dead_letters + other.dead_letters,
            self.contributors | other.contributors, self.ids + other.ids, self.duplicates + other.duplicates,
            merge_segments(self.segments, other.segments),
        )

    def add_segments(self, batch: Mapping[str, SegmentCounts], limit: int) -> None:
        """Add one batch's segment counts, keeping at most ``limit`` values per field (the rest pooled)."""
        for name, part in batch.items():
            have = self.segments.get(name)
            self.segments[name] = (part if have is None else have + part).capped(limit)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "start_ms": self.start_ms, "end_ms": self.end_ms,
                "columns": {k: v.to_dict() for k, v in self.columns.items()}, "score": self.score.to_dict(),
                "messages": self.messages, "dead_letters": self.dead_letters,
                "contributors": sorted(self.contributors), "ids": self.ids, "duplicates": self.duplicates,
                **({"segments": {k: v.to_dict() for k, v in self.segments.items()}} if self.segments else {})}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> WindowSketch:
        return WindowSketch(d["model"], d["version"], int(d["start_ms"]), int(d["end_ms"]),
                            {k: ColumnSketch.from_dict(v) for k, v in d["columns"].items()},
                            ColumnSketch.from_dict(d["score"]), int(d["messages"]), int(d["dead_letters"]),
                            frozenset(d.get("contributors", ())), int(d.get("ids", 0)), int(d.get("duplicates", 0)),
                            {k: SegmentCounts.from_dict(v) for k, v in d.get("segments", {}).items()})


def merge_segments(a: Mapping[str, SegmentCounts], b: Mapping[str, SegmentCounts]) -> dict[str, SegmentCounts]:
    """Field-wise sum of two windows' segment counts (a field only one side has is kept as it is)."""
    out = dict(a)
    for name, counts in b.items():
        have = out.get(name)
        out[name] = counts if have is None else have + counts
    return out


SCORE_KEY = "\0score"


def fine_maps(profile: ReferenceProfile) -> dict[str, np.ndarray]:
    """Fine→PSI bin map of every numeric column (and the score, under ``SCORE_KEY``) that has one."""
    refs = [*profile.monitored, profile.score]
    keys = [*(f.name for f in profile.monitored), SCORE_KEY]
    return {k: m for k, r in zip(keys, refs, strict=True)
            if isinstance(r, NumericReference) and (m := r.fine_to_psi) is not None}


def window_bounds(now_ms: int, length_ms: int) -> tuple[int, int]:
    """The aligned tumbling window holding ``now_ms``: every worker computes the same bounds."""
    start = now_ms - now_ms % length_ms
    return start, start + length_ms
