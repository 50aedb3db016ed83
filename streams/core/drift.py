"""The drift monitor behind the drift agent: merge sketches, close windows, raise alerts.

Pure and clock-driven (``now_ms`` is passed in), so the agent only moves
bytes: sketches in, Avro alert and retrain records out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from driftline.detectors.evaluate import (
    BIAS,
    DEAD_LETTERS,
    DUPLICATES,
    SCORE,
    ColumnResult,
    bias_results,
    window_results,
)
from driftline.detectors.fairness import POSITIVE, SKETCH_VALUES, WIDTH, N, SegmentCounts
from driftline.detectors.impact import BY_PSI, FeatureImpact
from driftline.detectors.multivariate import MULTIVARIATE
from driftline.detectors.policy import AlertDecision, AlertPolicy, PolicyConfig, RetrainDecision
from driftline.detectors.profile import NumericReference, ReferenceProfile
from driftline.detectors.river_signal import KINDS
from driftline.detectors.sketch import ColumnSketch, WindowSketch, empty_column
from driftline.streams.core.events import Alert, BinShift, RetrainEvent, event_id, retrain_request
from driftline.streams.core.poison import BadRecord, Skip, brief, load_json, printable_name

log = logging.getLogger(__name__)
STATE_FORMAT = 1
MAX_MS = 2**53  # epoch ms beyond this are no time
MAX_COUNT = 2**40  # a count no real sketch reaches; keeps merged int64 counts far from overflow


def column_label(column: str) -> str:
    """A column's name for people and labels: the model score and the dead-letter rate get readable ones."""
    return {SCORE: "score", DEAD_LETTERS: "dead_letters", DUPLICATES: "duplicates",
            MULTIVARIATE: "multivariate"}.get(column, column)


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
    expected_duplicate_rate: float = 0.001
    max_pending: int = 1_000  # open windows kept at most; the oldest is evicted (and logged) beyond
    max_skew_ms: int | None = None  # sketches whose window starts further from now are refused (None: any)
    bias_bound: float = 0.1  # a segment's decision-rate spread beyond this (and significant) is a bias finding
    bias_max_values: int = 10  # segment values audited and shown per field: the most frequent, the rest pooled
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
        if position is not None and not self.mark_applied(sketch.model, position):
            return False
        key = (sketch.model, sketch.version, sketch.start_ms)
        have = self.pending.get(key)
        if have is None:
            self.pending[key] = sketch
            self._evict()
        else:
            merged = have + replace(sketch, end_ms=have.end_ms)  # count windows of two workers end apart
            merged.end_ms = max(have.end_ms, sketch.end_ms)
            self.pending[key] = merged
        return True

    def mark_applied(self, model: str, position: tuple[int, int]) -> bool:
        """Record ``position`` as the model's last record applied; False when it was applied before.

        Every record of ``{ns}.sketches`` for a model (window sketches and label
        batches) shares this position, saved with the model's state.
        """
        last = self.applied.get(model)
        if last is not None and last[0] == position[0] and position[1] <= last[1]:
            return False
        self.applied[model] = position
        return True

    def check(self, sketch: WindowSketch, now_ms: int) -> None:
        """BadRecord unless ``sketch`` may be merged: its window is near ``now_ms`` and it fits a known profile.

        A far-future window would never close, and every (model, version,
        start) opens a pending window: without these checks the sketches
        topic decides how much this monitor holds.
        """
        self._check_time(sketch, now_ms)
        self._check_shape(sketch)

    def _check_time(self, sketch: WindowSketch, now_ms: int) -> None:
        if self.max_skew_ms is None:
            return
        for name, at in (("starts", sketch.start_ms), ("ends", sketch.end_ms)):
            if abs(at - now_ms) > self.max_skew_ms:
                raise BadRecord("window_out_of_range",
                                f"sketch of {sketch.model!r} v{sketch.version!r}: its window {name} "
                                f"{(at - now_ms) / 1000:+.0f}s from now, beyond sketch_max_skew_s "
                                f"({self.max_skew_ms / 1000:g}s); is that worker's clock right?")

    def _check_shape(self, sketch: WindowSketch) -> None:
        profile = self._profile(sketch.model, sketch.version)
        if profile is None:
            raise BadRecord("unknown_model", f"no reference profile for model {sketch.model!r} "
                                             f"v{sketch.version!r} in this registry")
        fits_profile(sketch, profile)

    def _evict(self) -> None:
        while len(self.pending) > self.max_pending:
            oldest = min(self.pending, key=lambda k: (self.pending[k].start_ms, k))
            sketch = self.pending.pop(oldest)
            log.warning("drift window of %s v%s from %d dropped unevaluated: more than %d windows pending "
                        "(drift_max_pending_windows)", sketch.model, sketch.version, sketch.start_ms,
                        self.max_pending)

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
            results = window_results(profile, sketch, self.config.alpha, self.expected_dead_letter_rate,
                                     self.expected_duplicate_rate)
            results += bias_results(sketch.segments, self.bias_bound, self.bias_max_values)
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

    def restore(self, model: str, state: Any, now_ms: int | None = None) -> None:
        """Replace what the monitor knows of ``model`` with a :meth:`snapshot`.

        The state comes from a topic, so all of it is checked before any of
        it is used: BadRecord (a ValueError) leaves the monitor as it was.
        With ``now_ms``, pending windows outside ``max_skew_ms`` are dropped.
        """
        if not isinstance(state, Mapping):
            raise BadRecord("invalid_state", f"drift state of {brief(model)} is not a JSON object")
        if state.get("format") != STATE_FORMAT:
            raise BadRecord("invalid_state", f"drift state format {brief(state.get('format'))} is not {STATE_FORMAT}")
        policy = policy_from(state.get("policy"), self.config)
        version = state.get("version")
        if version is not None:
            _name(version, "version")
        pending = _list(state.get("pending"), "pending")
        windows = [sketch_from_dict(d) for d in pending]
        fitting = []
        for sketch in windows:
            if sketch.model != model:
                raise BadRecord("invalid_state", f"drift state of {brief(model)} holds a window of another model")
            try:  # a window that no longer fits its profile (rebuilt) is dropped, not the whole state
                self._check_shape(sketch)
                fitting.append(sketch)
            except BadRecord as exc:
                log.warning("drift state of %s: a pending window is dropped: %s", model, exc.detail)
        windows = fitting
        if now_ms is not None:
            kept = []
            for sketch in windows:
                try:
                    self._check_time(sketch, now_ms)
                    kept.append(sketch)
                except BadRecord as exc:
                    log.warning("drift state of %s: a pending window is dropped: %s", model, exc.detail)
            windows = kept
        applied = state.get("applied")
        if applied is not None and not (isinstance(applied, list) and len(applied) == 2
                                        and all(_is_int(a, MAX_MS) for a in applied)):
            raise BadRecord("invalid_state", "applied must be null or [partition, offset]")
        self.policies[model] = policy
        if version is not None:
            self.policy_versions[model] = version
        self.pending = {k: v for k, v in self.pending.items() if k[0] != model}
        for sketch in windows:
            self.add(sketch)
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


def parse_sketch(value: bytes | None, monitor: DriftMonitor, now_ms: int) -> WindowSketch | Skip:
    """A record of ``{ns}.sketches`` as a sketch ``monitor`` may merge, or why not; never raises."""
    try:
        sketch = sketch_from_dict(load_json(value))
        monitor.check(sketch, now_ms)
    except BadRecord as exc:
        return exc.skip()
    return sketch


def resume(monitor: DriftMonitor, model: str, value: bytes | None, now_ms: int) -> Skip | None:
    """Restore ``model`` from its record on ``{ns}.drift-state``; why not (the monitor unchanged); never raises."""
    try:
        monitor.restore(model, load_json(value), now_ms)
    except BadRecord as exc:
        return exc.skip()
    return None


def sketch_from_dict(d: Any) -> WindowSketch:
    """A window sketch from JSON data checked field by field; BadRecord (invalid_sketch) saying what is wrong.

    :meth:`WindowSketch.from_dict` trusts its input (it reads what this
    code wrote); records on the sketches and state topics are not trusted.
    """
    if not isinstance(d, Mapping):
        raise BadRecord("invalid_sketch", "a sketch must be a JSON object")
    start, end = _int(d, "start_ms", MAX_MS), _int(d, "end_ms", MAX_MS)
    if end < start:
        raise BadRecord("invalid_sketch", f"end_ms {end} is before start_ms {start}")
    columns = d.get("columns")
    if not isinstance(columns, Mapping):
        raise BadRecord("invalid_sketch", "columns must be an object of column sketches")
    messages, dead = _int(d, "messages", MAX_COUNT), _int(d, "dead_letters", MAX_COUNT)
    if dead > messages:
        raise BadRecord("invalid_sketch", f"{dead} dead letters out of {messages} messages")
    contributors = _list(d.get("contributors", []), "contributors")
    # sketches written before duplicate counting have neither: nothing checked
    ids = _int(d, "ids", MAX_COUNT) if "ids" in d else 0
    duplicates = _int(d, "duplicates", MAX_COUNT) if "duplicates" in d else 0
    if duplicates > ids or ids > messages:
        raise BadRecord("invalid_sketch", f"{duplicates} duplicates of {ids} ids checked in {messages} messages")
    return WindowSketch(
        _name(d.get("model"), "model"), _name(d.get("version"), "version"), start, end,
        {_name(k, "column"): _column(v, k) for k, v in columns.items()}, _column(d.get("score"), "score"),
        messages, dead, frozenset(_name(c, "contributor") for c in contributors), ids, duplicates,
        {_name(k, "segment"): segment_from(v, k) for k, v in _mapping_of(d.get("segments", {}), "segments").items()},
    )


def _mapping_of(value: Any, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise BadRecord("invalid_sketch", f"{what} must be an object")
    return value


def segment_from(d: Any, name: Any) -> SegmentCounts:
    """One segment field's counts: unique printable values, rows of WIDTH counts, positives within requests."""
    d = _mapping_of(d, f"segment {str(name)[:80]!r}")
    values, rows = _list(d.get("values"), "segment values"), _list(d.get("counts"), "segment counts")
    if len(values) > 4 * SKETCH_VALUES or len(rows) != len(values):
        raise BadRecord("invalid_sketch", f"segment {str(name)[:80]!r}: {len(values)} values, {len(rows)} rows "
                                          f"of counts (at most {4 * SKETCH_VALUES}, one row each)")
    names = [_name(v, "segment value") for v in values]
    if len(set(names)) != len(names):
        raise BadRecord("invalid_sketch", f"segment {str(name)[:80]!r} lists a value twice")
    if not all(isinstance(r, list) and len(r) == WIDTH and all(_is_int(c, MAX_COUNT) for c in r) for r in rows):
        raise BadRecord("invalid_sketch", f"segment {str(name)[:80]!r}: each value needs {WIDTH} counts")
    counts = np.asarray(rows, dtype=np.int64).reshape(len(rows), WIDTH)
    if (counts[:, POSITIVE] > counts[:, N]).any():
        raise BadRecord("invalid_sketch", f"segment {str(name)[:80]!r}: more positive decisions than requests")
    order = sorted(range(len(names)), key=names.__getitem__)
    return SegmentCounts(tuple(names[i] for i in order), counts[order])


def fits_profile(sketch: WindowSketch, profile: ReferenceProfile) -> None:
    """BadRecord (profile_mismatch) unless every column of ``sketch`` has the shape its reference has.

    The multivariate column is optional both ways (a worker with a profile
    built before it, or an agent whose profile lacks it, during an upgrade or
    a ``profile build --force``): missing, it is added empty; unexpected, it
    is dropped. Every other column must match.
    """
    if profile.multivariate is not None and MULTIVARIATE not in sketch.columns:
        sketch.columns[MULTIVARIATE] = empty_column(profile.multivariate.errors)
    elif profile.multivariate is None:
        sketch.columns.pop(MULTIVARIATE, None)
    names = [f.name for f in profile.monitored]
    if set(sketch.columns) != set(names):
        raise BadRecord("profile_mismatch", f"sketch of {sketch.model!r} v{sketch.version!r} has columns "
                                            f"{brief(sorted(sketch.columns))}, the profile {brief(names)}")
    for ref, col in ((*zip(profile.monitored, (sketch.columns[n] for n in names), strict=True),
                     (profile.score, sketch.score))):
        fine = len(ref.fine_counts) if isinstance(ref, NumericReference) else 0
        if len(col.counts) != len(ref.counts) or len(col.fine) != fine:
            raise BadRecord("profile_mismatch", f"column {ref.name!r} has {len(col.counts)}/{len(col.fine)} "
                                                f"bins, the profile {len(ref.counts)}/{fine}")
        if int(col.counts.sum()) != col.n or (fine and int(col.fine.sum()) != col.n):
            raise BadRecord("profile_mismatch", f"column {ref.name!r}: its bins do not add up to its n {col.n}")


def _column(d: Any, name: Any) -> ColumnSketch:
    if not isinstance(d, Mapping):
        raise BadRecord("invalid_sketch", f"column {str(name)[:80]!r} must be an object")
    total, total_sq = d.get("sum", 0.0), d.get("sum_sq", 0.0)
    for what, value in (("sum", total), ("sum_sq", total_sq)):
        if not _is_finite(value):
            raise BadRecord("invalid_sketch", f"column {str(name)[:80]!r}: {what} must be a finite number")
    return ColumnSketch(_counts(d.get("counts"), name), _counts(d.get("fine"), name), _int(d, "n", MAX_COUNT),
                        _int(d, "nulls", MAX_COUNT), float(total), float(total_sq))


def _counts(value: Any, name: Any) -> np.ndarray:
    if not isinstance(value, list) or not all(_is_int(v, MAX_COUNT) for v in value):
        raise BadRecord("invalid_sketch", f"column {str(name)[:80]!r}: counts must be lists of counts")
    return np.asarray(value, dtype=np.int64).reshape(len(value))


def policy_from(d: Any, config: PolicyConfig) -> AlertPolicy:
    """An alert policy from its checked snapshot (the shapes :meth:`AlertPolicy.snapshot` writes)."""
    if not isinstance(d, Mapping):
        raise BadRecord("invalid_state", "policy must be an object")
    history, last_alert, runs, detectors = (_mapping(d.get(k, {}), k)
                                            for k in ("history", "last_alert", "critical_runs", "detectors"))
    last_retrain = d.get("last_retrain")
    ok = (_is_int(d.get("window_index"), MAX_MS)
          and all(isinstance(v, list) and all(isinstance(b, bool) for b in v) for v in history.values())
          and all(_is_int(v, MAX_MS) for v in (*last_alert.values(), *runs.values()))
          and (last_retrain is None or _is_int(last_retrain, MAX_MS))
          and all(isinstance(v, Mapping) and v.get("kind") in KINDS and isinstance(v.get("history"), list)
                  and all(_is_finite(x) for x in v["history"]) for v in detectors.values()))
    if not ok:
        raise BadRecord("invalid_state", "policy does not have the shape of an alert policy snapshot")
    return AlertPolicy.restore({**d, "history": history, "last_alert": last_alert, "critical_runs": runs,
                                "detectors": detectors}, config)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise BadRecord("invalid_state", f"{what} must be an object")
    return dict(value)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRecord("invalid_sketch", f"{what} must be a list")
    return value


def _name(value: Any, what: str) -> str:
    return printable_name(value, what, "invalid_sketch")


def _int(d: Mapping[str, Any], key: str, limit: int) -> int:
    value: Any = d.get(key)
    if not _is_int(value, limit):
        raise BadRecord("invalid_sketch", f"{key} must be an integer in [0, {limit}), got {brief(value)}")
    return int(value)


def _is_int(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _is_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def alert_id(sketch: WindowSketch, result: ColumnResult) -> str:
    """Deterministic: a window redone after a restart raises the same alert id (consumers dedupe)."""
    return event_id(sketch.model, sketch.version, str(sketch.start_ms), *result.parts)


def alert_record(sketch: WindowSketch, decision: AlertDecision, now_ms: int,
                 ranked: Mapping[str, FeatureImpact] | None = None) -> Alert:
    """The alert of one decision about a closed window; ``ranked``: the window's drifted features by impact."""
    r = decision.result
    feature = None if r.column in (SCORE, DEAD_LETTERS, DUPLICATES, MULTIVARIATE) else r.column
    what = {SCORE: "model score", DEAD_LETTERS: "dead-letter rate", DUPLICATES: "repeated request ids",
            MULTIVARIATE: "joint distribution of the features (PCA reconstruction error)"}.get(r.column, r.column)
    extra = f", PSI {r.psi:.3f} (chance level {r.psi_threshold:.3f})" if r.statistic in ("ks", "chi2") else ""
    if r.kind == BIAS:
        what = f"positive decisions across {r.column}"
        extra = "; " + ", ".join(f"{v} {q:.1%}" for v, _, q in r.top_bins) + \
            (f" (all {r.top_bins[0][1]:.1%})" if r.top_bins else "")
    if decision.change_point:
        extra += "; change point"
    rank = (ranked or {}).get(r.column) if r.kind == "data_drift" else None
    if rank is not None:
        extra += "; " + impact_phrase(rank)
    return Alert(
        id=alert_id(sketch, r), model=sketch.model, model_version=sketch.version, kind=r.kind,
        severity=decision.severity, feature=feature, statistic=r.statistic, value=float(r.value),
        threshold=float(r.threshold), window_start=sketch.start_ms, window_end=sketch.end_ms, sample_size=int(r.n),
        reference_size=int(r.reference_n), top_bins=tuple(BinShift(b, p, q) for b, p, q in r.top_bins),
        message=f"{what}: {r.statistic} {r.value:.4g} > {r.threshold:.4g} (p={r.p_value:.2g}){extra}",
        created_at=now_ms, impact=None if rank is None else rank.impact,
        impact_rank=None if rank is None else rank.rank, drifted_features=None if rank is None else rank.of,
    )


def impact_phrase(rank: FeatureImpact) -> str:
    """Where a drifted feature ranks, for the alert's message."""
    if rank.method == BY_PSI or rank.impact is None:
        return (f"rank {rank.rank} of {rank.of} drifted features by PSI (the effect on the score was not "
                "estimated: the profile has no joint rows, rebuild it, or the drift agent's log says why)")
    return f"rank {rank.rank} of {rank.of} drifted features by effect on the score (W1 {rank.impact:.3g})"


def retrain_record(sketch: WindowSketch, decision: RetrainDecision, alert_ids: Sequence[str], lookback_ms: int,
                   now_ms: int) -> RetrainEvent:
    """The retrain request of a window: train on data since the drift began."""
    return retrain_request(sketch.model, sketch.version, decision.reason, tuple(alert_ids),
                           sketch.start_ms - lookback_ms, sketch.end_ms, now_ms,
                           cause=(str(sketch.start_ms), "retrain"))
