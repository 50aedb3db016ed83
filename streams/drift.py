"""The drift monitor behind the drift agent: merge sketches, close windows, raise alerts.

Pure and clock-driven (``now_ms`` is passed in), so the agent only moves
bytes: sketches in, Avro alert and retrain records out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from detectors.evaluate import DEAD_LETTERS, SCORE, ColumnResult, dead_letter_result, evaluate
from detectors.policy import AlertDecision, AlertPolicy, PolicyConfig, RetrainDecision
from detectors.profile import ReferenceProfile
from detectors.sketch import WindowSketch

log = logging.getLogger(__name__)
STATE_FORMAT = 1


def column_label(column: str) -> str:
    """A column's name for people and labels: the model score and the dead-letter rate get readable ones."""
    return {SCORE: "score", DEAD_LETTERS: "dead_letters"}.get(column, column)


class ClosedWindow(NamedTuple):
    """One evaluated window: its merged sketch, the alerts and retrain request it raised, every column's result."""

    sketch: WindowSketch
    alerts: list[AlertDecision]
    retrain: RetrainDecision | None
    results: list[ColumnResult]


@dataclass
class DriftMonitor:
    """Per model: pending windows by version and start time, the reference profiles and the alert policy.

    ``profiles`` maps a model name to its reference profile, or is a function
    of (model, version): each version is compared with its own reference.
    A model's alert policy starts afresh when its served version changes
    (a new champion has a new reference and a new baseline).
    """

    profiles: Mapping[str, ReferenceProfile] | Callable[[str, str], ReferenceProfile | None]
    config: PolicyConfig
    grace_ms: int
    expected_dead_letter_rate: float = 0.02
    pending: dict[tuple[str, str, int], WindowSketch] = field(default_factory=dict)
    policies: dict[str, AlertPolicy] = field(default_factory=dict)
    policy_versions: dict[str, str] = field(default_factory=dict)
    applied: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, sketch: WindowSketch, position: tuple[int, int] | None = None) -> bool:
        """Merge a worker's sketch into its pending window; False when it was applied before.

        ``position`` is the sketch's (partition, offset) on the sketches topic.
        A sketch at or before the last position applied for its model is a
        redelivery after a restart (its effect is already in the resumed
        state), so it is skipped rather than counted twice.
        """
        if position is not None:
            last = self.applied.get(sketch.model)
            if last is not None and last[0] == position[0] and position[1] <= last[1]:
                return False
            self.applied[sketch.model] = position
        key = (sketch.model, sketch.version, sketch.start_ms)
        have = self.pending.get(key)
        if have is None:
            self.pending[key] = sketch
        else:
            merged = have + sketch
            merged.end_ms = max(have.end_ms, sketch.end_ms)
            self.pending[key] = merged
        return True

    def close_due(self, now_ms: int) -> list[ClosedWindow]:
        """Evaluate every window whose end is more than the grace period ago, oldest first."""
        due = sorted(self.pending, key=lambda k: (self.pending[k].start_ms, k))
        due = [k for k in due if self.pending[k].end_ms + self.grace_ms <= now_ms]
        out = []
        for key in due:
            sketch = self.pending.pop(key)
            profile = self._profile(sketch.model, sketch.version)
            if profile is None:
                log.warning("no reference profile for model %s v%s; window dropped", sketch.model, sketch.version)
                continue
            results = evaluate(profile, sketch, self.config.alpha)
            dead = dead_letter_result(sketch, self.expected_dead_letter_rate, self.config.alpha)
            if dead is not None:
                results.append(dead)
            if self.policy_versions.get(sketch.model, sketch.version) != sketch.version:
                log.info("model %s now serves v%s: its alert policy starts afresh", sketch.model, sketch.version)
                self.policies.pop(sketch.model, None)
            self.policy_versions[sketch.model] = sketch.version
            policy = self.policies.setdefault(sketch.model, AlertPolicy(self.config))
            alerts, retrain = policy.update(results)
            out.append(ClosedWindow(sketch, alerts, retrain, results))
        return out

    def _profile(self, model: str, version: str) -> ReferenceProfile | None:
        if callable(self.profiles):
            return self.profiles(model, version)
        return self.profiles.get(model)

    def snapshot(self, model: str) -> dict[str, Any]:
        """Everything the monitor knows of one model, as JSON-ready data.

        The alert policy (hysteresis, cooldowns, River detectors, window
        count), the model's pending windows and the position of the last
        sketch applied: with it a restarted or newly assigned drift agent
        resumes exactly where the previous one stopped.
        """
        applied = self.applied.get(model)
        return {
            "format": STATE_FORMAT,
            "policy": self.policies.setdefault(model, AlertPolicy(self.config)).snapshot(),
            "version": self.policy_versions.get(model),
            "pending": [s.to_dict() for (m, _, _), s in sorted(self.pending.items()) if m == model],
            "applied": list(applied) if applied is not None else None,
        }

    def restore(self, model: str, state: Mapping[str, Any]) -> None:
        """Replace what the monitor knows of ``model`` with a :meth:`snapshot`."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"drift state format {state.get('format')!r} is not {STATE_FORMAT}")
        self.policies[model] = AlertPolicy.restore(state["policy"], self.config)
        if state.get("version") is not None:
            self.policy_versions[model] = str(state["version"])
        self.pending = {k: v for k, v in self.pending.items() if k[0] != model}
        for d in state["pending"]:
            sketch = WindowSketch.from_dict(d)
            self.pending[(model, sketch.version, sketch.start_ms)] = sketch
        applied = state.get("applied")
        if applied is None:
            self.applied.pop(model, None)
        else:
            self.applied[model] = (int(applied[0]), int(applied[1]))

    def window_count(self, model: str) -> int:
        policy = self.policies.get(model)
        return 0 if policy is None else policy.window_index

    def forget(self) -> None:
        """Drop all state (the sketches partitions moved: their new owner resumes from the state topic)."""
        self.pending.clear()
        self.policies.clear()
        self.policy_versions.clear()
        self.applied.clear()


def alert_id(sketch: WindowSketch, result: ColumnResult) -> str:
    """Deterministic: a window redone after a restart raises the same alert id (consumers dedupe)."""
    text = f"{sketch.model}|{sketch.version}|{sketch.start_ms}|{result.kind}|{result.column}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def alert_record(sketch: WindowSketch, decision: AlertDecision, now_ms: int) -> dict[str, Any]:
    """The ``driftline.Alert`` record of one decision."""
    r = decision.result
    feature = None if r.column in (SCORE, DEAD_LETTERS) else r.column
    what = {SCORE: "model score", DEAD_LETTERS: "dead-letter rate"}.get(r.column, r.column)
    extra = f", PSI {r.psi:.3f} (chance level {r.psi_threshold:.3f})" if r.statistic in ("ks", "chi2") else ""
    if decision.change_point:
        extra += "; River change point"
    return {
        "id": alert_id(sketch, r), "model": sketch.model, "model_version": sketch.version, "kind": r.kind,
        "severity": decision.severity, "feature": feature, "statistic": r.statistic, "value": float(r.value),
        "threshold": float(r.threshold), "window_start": sketch.start_ms, "window_end": sketch.end_ms,
        "sample_size": int(r.n), "reference_size": int(r.reference_n),
        "top_bins": [{"bin": b, "reference": p, "current": q} for b, p, q in r.top_bins],
        "message": f"{what}: {r.statistic} {r.value:.4g} > {r.threshold:.4g} (p={r.p_value:.2g}){extra}",
        "created_at": now_ms,
    }


def retrain_record(sketch: WindowSketch, decision: RetrainDecision, alert_ids: list[str], lookback_ms: int,
                   now_ms: int) -> dict[str, Any]:
    """The ``driftline.RetrainRequest`` record: train on data since the drift began."""
    start = sketch.start_ms - lookback_ms
    text = f"{sketch.model}|{sketch.version}|{sketch.start_ms}|retrain"
    return {
        "id": hashlib.sha256(text.encode()).hexdigest()[:32], "model": sketch.model,
        "model_version": sketch.version, "stage": "requested", "reason": decision.reason,
        "alert_ids": alert_ids, "data_start": start, "data_end": sketch.end_ms, "requested_at": now_ms,
        "candidate_version": None,
    }
