"""The quality policy: labeled events into windows, a baseline per version, a drop test, one alert per incident.

Pure and per event, like the drift policy in :mod:`driftline.detectors.policy`: the
feedback agent hands in one joined (prediction, label) pair at a time and
gets back the windows that closed, each with a verdict, and whether the
concept detector saw a change point. Per (model, version, variant), events
fill windows of ``window_labels``; the first closed window is the baseline,
and a later one whose accuracy is significantly lower (one-sided test at
``alpha``, sample-size aware) by at least ``drop_min`` opens an incident,
reported once until a window recovers; and a new incident of the same
(model, version, variant) within ``cooldown_ms`` of the last report is not
reported again (windows of a few hundred labels close every second or two
at a busy label rate, and an accuracy near the threshold flips between
"dropped" and "recovered"). Every event also feeds a River
concept-drift detector per (model, version) with the decision's error.

>>> p = QualityPolicy(window_labels=4, alpha=0.01, drop_min=0.05, concept_kind="adwin")
>>> key = ("fraud", "1", "champion")
>>> closed = [c for s, y in [(0.9, True), (0.1, False), (0.8, True), (0.2, False)]
...           for c in p.add(key, "classification", s, positive=y, threshold=0.5)[0]]
>>> closed[0].window.accuracy, closed[0].drop, p.baseline[key]
(1.0, None, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driftline.detectors.concept import ConceptDetector
from driftline.detectors.quality import QualitySketch, accuracy_drop

Key = tuple[str, str, str]  # (model, version, variant)
SNAPSHOT_FORMAT = 3  # 2: with the concept detectors; 3: with the time of the last report


@dataclass(frozen=True, slots=True)
class QualityDrop:
    """A significant accuracy drop against the baseline: a ``performance_drop`` to raise."""

    baseline: float
    accuracy: float
    p_value: float
    threshold: float  # the accuracy below which the drop is significant at this window's size


@dataclass(frozen=True, slots=True)
class ClosedQuality:
    """A full window of labeled events, and the drop it shows (None: no new incident, or a regressor)."""

    key: Key
    window: QualitySketch
    drop: QualityDrop | None


@dataclass
class QualityPolicy:
    """Quality windows, baselines, open incidents and concept detectors of every (model, version[, variant])."""

    window_labels: int
    alpha: float
    drop_min: float
    concept_kind: str
    cooldown_ms: int = 0
    windows: dict[Key, QualitySketch] = field(default_factory=dict)
    baseline: dict[Key, float] = field(default_factory=dict)
    open: set[Key] = field(default_factory=set)  # keys with a performance_drop incident open
    reported: dict[Key, int] = field(default_factory=dict)  # when each key's last drop was reported (ms)
    concept: dict[tuple[str, str], ConceptDetector] = field(default_factory=dict)

    def add(self, key: Key, task: str, score: float, *, positive: bool | None = None,
            target: float | None = None, threshold: float = 0.5, now_ms: int = 0) -> tuple[list[ClosedQuality], bool]:
        """Fold one labeled event; returns (closed windows with their verdicts, concept change point?).

        ``positive``: whether the true class is the positive one (classifiers);
        ``target``: the true value (regressors; an event without one is ignored).
        Per event, with the sketch's scalar folds (a few microseconds): labels
        arrive one by one from the join, and numpy's per-call overhead would dominate.
        """
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = QualitySketch()
        if task == "regression":
            if target is None:
                return [], False
            error = w.add_error(target, score)
        else:
            error = float(w.add_decision(bool(positive), score, threshold))
        model_version = (key[0], key[1])
        detector = self.concept.get(model_version)
        if detector is None:
            detector = self.concept[model_version] = ConceptDetector(
                self.concept_kind if task != "regression" else "adwin")
        change = detector.update(error)
        if w.n < self.window_labels:
            return [], change
        del self.windows[key]
        return [ClosedQuality(key, w, self._verdict(key, w, now_ms) if task != "regression" else None)], change

    def concept_seen(self, model: str, version: str) -> int:
        """Labeled events the concept detector of (model, version) has seen."""
        detector = self.concept.get((model, version))
        return detector.seen if detector is not None else 0

    def _verdict(self, key: Key, window: QualitySketch, now_ms: int) -> QualityDrop | None:
        if key not in self.baseline:
            self.baseline[key] = window.accuracy
            return None
        base = self.baseline[key]
        p, below = accuracy_drop(base, window, self.alpha)
        if not (p < self.alpha and base - window.accuracy >= self.drop_min):
            self.open.discard(key)  # recovered: the next drop is a new incident
            return None
        if key in self.open:
            return None
        self.open.add(key)
        last = self.reported.get(key)
        if last is not None and now_ms - last < self.cooldown_ms:
            return None  # the same trouble again within the cooldown: open, not reported
        self.reported[key] = now_ms
        return QualityDrop(base, window.accuracy, p, below)

    def snapshot(self) -> dict[str, Any]:
        """Windows, baselines, open incidents and concept detectors as JSON-ready data."""
        return {
            "format": SNAPSHOT_FORMAT,
            "windows": [[*k, w.to_dict()] for k, w in self.windows.items()],
            "baseline": [[*k, v] for k, v in self.baseline.items()],
            "open": [list(k) for k in sorted(self.open)],
            "concept": [[*k, d.snapshot()] for k, d in self.concept.items()],
            "reported": [[*k, at] for k, at in self.reported.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`snapshot`; ``ValueError`` (and nothing changed) when it is not one."""
        try:
            if state.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"unknown quality state format {state.get('format')!r}")
            windows = {(str(m), str(v), str(var)): QualitySketch.from_dict(d) for m, v, var, d in state["windows"]}
            baseline = {(str(m), str(v), str(var)): float(b) for m, v, var, b in state["baseline"]}
            open_ = {(str(m), str(v), str(var)) for m, v, var in state["open"]}
            concept = {(str(m), str(v)): ConceptDetector.restore(d) for m, v, d in state["concept"]}
            reported = {(str(m), str(v), str(var)): int(at) for m, v, var, at in state["reported"]}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a quality state: {type(exc).__name__}: {exc}") from None
        self.windows, self.baseline, self.open, self.concept = windows, baseline, open_, concept
        self.reported = reported
