"""Evaluating change detectors on window signals with known change points.

A piecewise stream alternates calm stretches (each window's test statistic
z ~ N(0, 1), so its p-value is uniform) with drifted ones (z ~ N(mu, 1),
mu drawn per stretch), and its signal is ``-log10 p`` as the policy feeds
its detectors. A detection counts when it falls within ``margin`` windows
after a true change not matched yet; anything else is a false alarm.
Precision, recall and F1 follow; "never" and "always" are the baselines
that any detector worth running must beat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.detectors.stats import normal_sf


@dataclass(frozen=True)
class Stream:
    signal: np.ndarray  # -log10 p per window
    changes: tuple[int, ...]  # the windows where a new stretch starts
    onsets: tuple[int, ...] = ()  # those where a drifted stretch starts (what the alert policy escalates)


@dataclass(frozen=True)
class Score:
    detections: int
    true_positives: int
    changes: int
    delays: tuple[int, ...]  # windows from each found change to its detection

    @property
    def precision(self) -> float:
        return self.true_positives / self.detections if self.detections else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.changes if self.changes else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: Score) -> Score:
        return Score(self.detections + other.detections, self.true_positives + other.true_positives,
                     self.changes + other.changes, self.delays + other.delays)


def piecewise_stream(rng: np.random.Generator, windows: int = 600, stretch: tuple[int, int] = (30, 90),
                     shift: tuple[float, float] = (1.0, 3.0)) -> Stream:
    """Calm and drifted stretches in turn, starting calm; each drifted one with its own mean shift of z."""
    means, changes, onsets, at, drifted = np.zeros(windows), [], [], 0, False
    while at < windows:
        length = int(rng.integers(stretch[0], stretch[1] + 1))
        if at > 0:
            changes.append(at)
            if drifted:
                onsets.append(at)
        means[at:at + length] = rng.uniform(*shift) if drifted else 0.0
        at, drifted = at + length, not drifted
    z = rng.normal(means, 1.0)
    p = np.array([normal_sf(v) for v in z.tolist()])
    return Stream(np.minimum(50.0, -np.log10(np.maximum(p, 1e-300))), tuple(changes), tuple(onsets))


def score(changes: Sequence[int], detections: Sequence[int], margin: int = 5) -> Score:
    """Each detection matches the earliest unmatched change at most ``margin`` windows before it."""
    open_changes = sorted(changes)
    matched: set[int] = set()
    delays = []
    for d in sorted(detections):
        hit = next((c for c in open_changes if c <= d <= c + margin and c not in matched), None)
        if hit is not None:
            matched.add(hit)
            delays.append(d - hit)
    return Score(len(detections), len(matched), len(changes), tuple(delays))


def run(make: Callable[[], object], stream: Stream) -> list[int]:
    """The windows where a fresh detector from ``make`` (River's interface: update, drift_detected) fires."""
    detector = make()
    fired = []
    for i, v in enumerate(stream.signal.tolist()):
        detector.update(v)  # type: ignore[attr-defined]
        if detector.drift_detected:  # type: ignore[attr-defined]
            fired.append(i)
    return fired


def evaluate(makers: dict[str, Callable[[], object]], streams: Sequence[Stream], margin: int = 5
             ) -> dict[str, Score]:
    """Each detector's score over all ``streams``, with the "never" and "always" baselines."""
    out = {name: sum((score(s.changes, run(make, s), margin) for s in streams), Score(0, 0, 0, ()))
           for name, make in makers.items()}
    out["never fires"] = sum((score(s.changes, [], margin) for s in streams), Score(0, 0, 0, ()))
    out["always fires"] = sum((score(s.changes, range(len(s.signal)), margin) for s in streams),
                              Score(0, 0, 0, ()))
    return out


def median(values: Sequence[int]) -> float:
    return float(np.median(values)) if values else math.nan
