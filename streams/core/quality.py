"""Model quality from labels, per model in one place: windows, drops, concept drift and the label-free estimate.

Every feedback member joins the labels of its own partitions, but a verdict
needs all labels of a model, in order, and state that outlives the worker.
So each member sends, per batch and model, a :class:`LabelBatch` (the joined
events' scores and outcomes, and the scores of new predictions) onto
``{ns}.sketches`` keyed by model. The member that owns that partition already
keeps the model's drift state; it folds the batch into a
:class:`QualityMonitor` and writes the model's quality state beside its drift
state on ``{ns}.drift-state``, so a restart or a rebalance resumes the quality
windows, baselines, open incidents, River concept detectors and the
label-free estimates' fitted maps (CBPE for classifiers, DLE for
regressors) where they were.

>>> batcher = LabelBatcher()
>>> for s, y in [(0.9, 1.0), (0.2, 0.0), (0.7, 1.0), (0.4, 1.0)]:
...     batcher.label("fraud", "1", "champion", "binary_classification", 0.5, s, y)
>>> [batch] = batcher.take()
>>> monitor = QualityMonitor(window_labels=4, alpha=0.01, drop_min=0.05, concept_kind="hddm_a")
>>> [closed] = monitor.apply(read_label_batch(json.loads(batch.to_bytes())), now_ms=0).closed
>>> closed.window.accuracy, closed.task
(0.75, 'binary_classification')
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, get_args

import numpy as np

from driftline.detectors.estimate import Calibration, Estimate, estimate
from driftline.detectors.evaluate import BIAS, ColumnResult
from driftline.detectors.fairness import (
    FN,
    SKETCH_VALUES,
    TP,
    SegmentCounts,
    disparities,
    rate_disparity_p,
    split_values,
)
from driftline.detectors.loss import LossEstimate, LossModel
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.quality import QualitySketch
from driftline.detectors.quality_policy import ClosedQuality, Key, QualityPolicy
from driftline.detectors.sketch import WindowSketch
from driftline.inference.deployment import ARM_A, ARM_B, CANARY, CHAMPION, SHADOW
from driftline.inference.manifest import Task
from driftline.streams.core.drift import DriftMonitor, policy_from, segment_from, sketch_from_dict
from driftline.streams.core.events import Alert, RetrainEvent, Severity, point_alert, retrain_request
from driftline.streams.core.poison import BadRecord, Skip, brief, load_json, printable_name

LABELS_KIND = "labels"  # the "kind" of a label batch on {ns}.sketches (window sketches have none)
TASKS = get_args(Task)  # binary_classification, regression
VARIANTS = frozenset({CHAMPION, CANARY, SHADOW, ARM_A, ARM_B})
MAX_MAGNITUDE = 1e100  # scores and outcomes beyond this are refused: squared errors must stay finite
MAX_VALUES = 1 << 20  # values in one group of a batch (a feedback batch holds at most a few thousand)
STATE_FORMAT = 1
CALIBRATION_BINS = 10  # bins of the CBPE calibration and of the DLE loss model
CLASSIFIER = "binary_classification"  # the task of a predictions group that names none (written before DLE)
MAX_SEGMENT_TEXT = 1_024  # characters of one request's joined segment values; longer ones count as missing
MAX_SEGMENT_FIELDS = 16
EQUAL_OPPORTUNITY = "equal_opportunity_difference"


@dataclass(frozen=True, slots=True)
class LabelGroup:
    """Joined events of one (version, variant), in arrival order.

    ``outcomes``: 1.0 where the true class is the positive one, else 0.0
    (classifiers); the true value (regressors).
    """

    version: str
    variant: str
    task: str
    threshold: float
    scores: np.ndarray
    outcomes: np.ndarray
    #: the manifest's segment fields, and each event's values of them joined (None: the record had none)
    fields: tuple[str, ...] = ()
    segments: tuple[str | None, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoreGroup:
    """Scores of new predictions of one (version, variant): what the label-free estimate reads."""

    version: str
    variant: str
    threshold: float
    scores: np.ndarray
    task: str = CLASSIFIER


@dataclass(frozen=True, slots=True)
class LabelBatch:
    """What one feedback batch tells the quality monitor about one model."""

    model: str
    labeled: tuple[LabelGroup, ...]
    predictions: tuple[ScoreGroup, ...]

    def to_bytes(self) -> bytes:
        return json.dumps({
            "kind": LABELS_KIND, "model": self.model,
            "labeled": [{"version": g.version, "variant": g.variant, "task": g.task, "threshold": g.threshold,
                         "scores": _pack(g.scores), "outcomes": _pack(g.outcomes),
                         **({"fields": list(g.fields), "segments": list(g.segments)} if g.fields else {})}
                        for g in self.labeled],
            "predictions": [{"version": g.version, "variant": g.variant, "task": g.task, "threshold": g.threshold,
                             "scores": _pack(g.scores)} for g in self.predictions],
        }, separators=(",", ":")).encode()


def is_label_batch(data: Any) -> bool:
    """Whether a decoded record of ``{ns}.sketches`` is a label batch (and not a window sketch)."""
    return isinstance(data, Mapping) and data.get("kind") == LABELS_KIND


def read_label_batch(data: Any) -> LabelBatch:
    """A label batch from decoded JSON, checked field by field; :class:`BadRecord` (``invalid_labels``) if not."""
    if not is_label_batch(data):
        raise BadRecord("invalid_labels", "a label batch must be a JSON object with kind 'labels'")
    labeled, predictions = data.get("labeled"), data.get("predictions")
    if not isinstance(labeled, list) or not isinstance(predictions, list):
        raise BadRecord("invalid_labels", "labeled and predictions must be lists")
    groups = []
    for g in labeled:
        g = _object(g, "a labeled group")
        task = _task(g.get("task"))
        scores, outcomes = _unpack(g.get("scores"), "scores"), _unpack(g.get("outcomes"), "outcomes")
        if len(scores) != len(outcomes):
            raise BadRecord("invalid_labels", f"{len(scores)} scores but {len(outcomes)} outcomes")
        if task != "regression" and not np.isin(outcomes, (0.0, 1.0)).all():
            raise BadRecord("invalid_labels", "a classifier's outcomes must be 0 or 1")
        fields, segments = _segments(g, len(scores))
        groups.append(LabelGroup(_name(g.get("version"), "version"), _variant(g.get("variant")), task,
                                 _number(g.get("threshold"), "threshold"), scores, outcomes, fields, segments))
    scored = []
    for g in predictions:
        g = _object(g, "a predictions group")
        scored.append(ScoreGroup(_name(g.get("version"), "version"), _variant(g.get("variant")),
                                 _number(g.get("threshold"), "threshold"), _unpack(g.get("scores"), "scores"),
                                 _task(g.get("task", CLASSIFIER))))
    return LabelBatch(_name(data.get("model"), "model"), tuple(groups), tuple(scored))


def _segments(g: Mapping[str, Any], n: int) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """A labeled group's optional segment fields and per-event joined values (absent in batches before them)."""
    fields, segments = g.get("fields", []), g.get("segments", [])
    if not fields:
        return (), ()
    if (not isinstance(fields, list) or len(fields) > MAX_SEGMENT_FIELDS or not isinstance(segments, list)
            or len(segments) != n):
        raise BadRecord("invalid_labels", f"segments must list at most {MAX_SEGMENT_FIELDS} fields and one value "
                                          "per labeled event")
    if not all(s is None or (isinstance(s, str) and len(s) <= MAX_SEGMENT_TEXT) for s in segments):
        raise BadRecord("invalid_labels", f"segment values must be null or text of at most {MAX_SEGMENT_TEXT} "
                                          "characters")
    return tuple(_name(f, "segment field") for f in fields), tuple(segments)


class LabelBatcher:
    """The feedback side: collects a batch's joined events and prediction scores, per model, in arrival order."""

    def __init__(self) -> None:
        self._labeled: dict[str, dict[tuple[str, str, str, float],
                                      tuple[list[float], list[float], list[str | None]]]] = {}
        self._fields: dict[str, tuple[str, ...]] = {}
        self._scores: dict[str, dict[tuple[str, str, str, float], list[float]]] = {}

    def label(self, model: str, version: str, variant: str, task: str, threshold: float, score: float,
              outcome: float, *, segments: str | None = None, fields: tuple[str, ...] = ()) -> None:
        """``fields``: the model's segment fields; ``segments``: this event's values of them, joined."""
        scores, outcomes, segs = self._labeled.setdefault(model, {}).setdefault(
            (version, variant, task, threshold), ([], [], []))
        scores.append(score)
        outcomes.append(outcome)
        segs.append(segments)
        if fields:
            self._fields[model] = fields

    def score(self, model: str, version: str, variant: str, task: str, threshold: float, score: float) -> None:
        self._scores.setdefault(model, {}).setdefault((version, variant, task, threshold), []).append(score)

    def take(self) -> list[LabelBatch]:
        """One batch per model with something to say, oldest model first; the batcher is empty afterwards."""
        out = []
        for model in {**self._labeled, **self._scores}:
            fields = self._fields.get(model, ())
            labeled = tuple(LabelGroup(v, var, task, thr, np.array(s), np.array(o), fields,
                                       tuple(segs) if fields else ())
                            for (v, var, task, thr), (s, o, segs) in self._labeled.get(model, {}).items())
            scored = tuple(ScoreGroup(v, var, thr, np.array(s), task)
                           for (v, var, task, thr), s in self._scores.get(model, {}).items())
            out.append(LabelBatch(model, labeled, scored))
        self._labeled, self._scores, self._fields = {}, {}, {}
        return out


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A full window of labeled events, and how far the label-free estimate was from it (None: no estimate).

    ``estimate_gap``: estimated minus real accuracy (classifiers), estimated minus real MAE (regressors).
    """

    key: Key
    window: QualitySketch
    task: str
    estimate_gap: float | None


@dataclass(frozen=True, slots=True)
class Verdicts:
    """What one label batch changed: closed windows, new estimates, alerts and retrain requests to send."""

    closed: tuple[ClosedWindow, ...] = ()
    estimates: tuple[tuple[Key, Estimate | LossEstimate], ...] = ()
    alerts: tuple[Alert, ...] = ()
    retrains: tuple[RetrainEvent, ...] = ()
    #: (model, segment field, counts) of each labeled segment window that closed: quality per segment value
    segments: tuple[tuple[str, str, SegmentCounts], ...] = ()


def quality_alert(key: Key, kind: str, value: float, threshold: float, n: int, message: str, now_ms: int,
                  severity: Severity = "critical") -> Alert:
    """A quality verdict; the variant is in its id, so a shadow's verdict never dedupes the champion's."""
    model, version, variant = key
    statistic = "accuracy" if kind == "performance_drop" else "error_rate"
    return point_alert(model, version, kind, statistic, value, threshold, message, now_ms, sample_size=n,
                       scope=(variant,), severity=severity)


@dataclass
class ModelQuality:
    """Everything the monitor knows of one model; all of it is in :meth:`QualityMonitor.snapshot`."""

    policy: QualityPolicy
    calibration: dict[str, Calibration] = field(default_factory=dict)  # by version: fit on its first window
    calibration_data: dict[str, tuple[list[float], list[bool]]] = field(default_factory=dict)
    unlabeled: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (version, variant): bin counts
    estimates: dict[tuple[str, str], float] = field(default_factory=dict)  # last estimated accuracy (MAE)
    requested: set[str] = field(default_factory=set)  # versions with a concept-drift retrain request sent
    loss: dict[str, LossModel] = field(default_factory=dict)  # regressors' DLE, by version: fit on its first window
    loss_data: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # (predictions, targets)
    loss_unlabeled: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (version, variant): bin counts
    #: the open labeled segment window (served variants, not shadows): confusion counts per field and value
    segments: dict[str, SegmentCounts] = field(default_factory=dict)
    segment_labels: int = 0
    bias: AlertPolicy | None = None  # the equal-opportunity findings' hysteresis and cooldown


@dataclass
class QualityMonitor:
    """Label batches of every model in, verdicts out; per-model state to snapshot and restore.

    ``known(model, version)`` says whether the registry has that version:
    batches come from a topic, and a group naming anything else is refused
    (so the state cannot grow with made-up names).
    """

    window_labels: int
    alpha: float
    drop_min: float
    concept_kind: str
    known: Callable[[str, str], bool] = lambda model, version: True
    cooldown_ms: int = 0  # a performance_drop of one key is reported at most once per this long
    models: dict[str, ModelQuality] = field(default_factory=dict)
    bias_policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(detector="none"))
    bias_bound: float = 0.1  # bias_max_difference: an equal-opportunity difference beyond it (and significant)
    bias_max_values: int = 10

    def check(self, batch: LabelBatch) -> None:
        """:class:`BadRecord` (``unknown_model``) unless every version the batch names is in the registry."""
        for version in {g.version for g in batch.labeled} | {g.version for g in batch.predictions}:
            if not self.known(batch.model, version):
                raise BadRecord("unknown_model", f"labels of model {brief(batch.model)} v{brief(version)}, "
                                                 "which is not in this registry")

    def _model(self, model: str) -> ModelQuality:
        found = self.models.get(model)
        if found is None:
            found = self.models[model] = ModelQuality(
                QualityPolicy(self.window_labels, self.alpha, self.drop_min, self.concept_kind, self.cooldown_ms))
        return found

    def apply(self, batch: LabelBatch, now_ms: int) -> Verdicts:
        """Fold a batch: labeled events first (each one in order), then the new predictions' scores."""
        state = self._model(batch.model)
        closed: list[ClosedWindow] = []
        alerts: list[Alert] = []
        retrains: list[RetrainEvent] = []
        for g in batch.labeled:
            key = (batch.model, g.version, g.variant)
            if g.variant != SHADOW:
                self._calibrate(state, g)
            for score, outcome in zip(g.scores.tolist(), g.outcomes.tolist(), strict=True):
                if g.task == "regression":
                    windows, change = state.policy.add(key, g.task, score, target=outcome, now_ms=now_ms)
                else:
                    windows, change = state.policy.add(key, g.task, score, positive=outcome == 1.0,
                                                       threshold=g.threshold, now_ms=now_ms)
                for c in windows:
                    closed.append(self._closed(state, c, g.task, alerts, now_ms))
                if change and g.variant != SHADOW:
                    self._concept(state, key, g.task, alerts, retrains, now_ms)
        estimates = [e for g in batch.predictions for e in self._estimate(state, batch.model, g)]
        segments = self._segments(state, batch, alerts, now_ms)
        return Verdicts(tuple(closed), tuple(estimates), tuple(alerts), tuple(retrains), segments)

    def _segments(self, state: ModelQuality, batch: LabelBatch, alerts: list[Alert],
                  now_ms: int) -> tuple[tuple[str, str, SegmentCounts], ...]:
        """Fold the served variants' labeled events into the segment window; close it at ``window_labels``.

        A closed window gives quality per segment value, and its equal-opportunity
        difference (true positive rates) goes through the drift alert policy like
        the decision rates' (beyond ``bias_bound`` and significant, k of m, cooldown).
        """
        for g in batch.labeled:
            if not g.fields or g.task == "regression" or g.variant == SHADOW or not len(g.scores):
                continue
            decided, truth = g.scores >= g.threshold, g.outcomes == 1.0
            for name, col in zip(g.fields, split_values(list(g.segments), len(g.fields)), strict=True):
                have = state.segments.get(name, SegmentCounts.empty())
                state.segments[name] = (have + SegmentCounts.fold(col, decided, labels=truth)).capped(SKETCH_VALUES)
            state.segment_labels += len(g.scores)
        if state.segment_labels < self.window_labels or not state.segments:
            return ()
        closed, state.segments, state.segment_labels = state.segments, {}, 0
        results = []
        for name, raw in sorted(closed.items()):
            counts = raw.capped(self.bias_max_values)
            spread = disparities(counts).equal_opportunity_difference
            if math.isnan(spread):
                continue
            k = counts.counts
            p = rate_disparity_p(k[:, TP], k[:, TP] + k[:, FN])
            results.append(ColumnResult(name, BIAS, EQUAL_OPPORTUNITY, spread, self.bias_bound, p, 0.0, 0.0,
                                        int((k[:, TP] + k[:, FN]).sum()), 0))
        if state.bias is None:
            state.bias = AlertPolicy(self.bias_policy)
        for decision in state.bias.update(results)[0]:
            r = decision.result
            alert = point_alert(
                batch.model, batch.labeled[0].version, BIAS, r.statistic, r.value, r.threshold,
                f"true positive rates across {r.column}: {r.statistic} {r.value:.4g} > {r.threshold:.4g} "
                f"(p={r.p_value:.2g}, {r.n} labeled positives)", now_ms, sample_size=r.n, scope=(r.column,),
                severity="critical" if decision.severity == "critical" else "warning")
            alerts.append(replace(alert, feature=r.column))
        return tuple((batch.model, name, counts) for name, counts in sorted(closed.items()))

    def _closed(self, state: ModelQuality, c: ClosedQuality, task: str, alerts: list[Alert],
                now_ms: int) -> ClosedWindow:
        key, window = c.key, c.window
        estimated = state.estimates.get((key[1], key[2]))
        if c.drop is not None:
            alerts.append(quality_alert(
                key, "performance_drop", c.drop.accuracy, c.drop.threshold, window.n,
                f"accuracy {c.drop.accuracy:.3f} vs {c.drop.baseline:.3f} at first "
                f"(p={c.drop.p_value:.2g}, {window.n} labels)", now_ms))
        real = window.mae if task == "regression" else window.accuracy
        return ClosedWindow(key, window, task, None if estimated is None else estimated - real)

    def _concept(self, state: ModelQuality, key: Key, task: str, alerts: list[Alert], retrains: list[RetrainEvent],
                 now_ms: int) -> None:
        model, version, _ = key
        seen = state.policy.concept_seen(model, version)
        kind = self.concept_kind if task != "regression" else "adwin"
        alert = quality_alert(key, "concept_drift", 1.0, 0.0, seen,
                              f"{kind} saw the error rate change after {seen} labeled events", now_ms)
        alerts.append(alert)
        if version in state.requested:  # one retrain request per version: train on labels from now on
            return
        state.requested.add(version)
        retrains.append(retrain_request(model, version, f"concept drift on v{version}: {alert.message}",
                                        (alert.id,), now_ms, now_ms, now_ms, cause=("concept_drift", str(now_ms))))

    def _calibrate(self, state: ModelQuality, g: LabelGroup) -> None:
        """Fit the version's label-free estimator on its first ``window_labels`` labeled events.

        A classifier's is the CBPE score → probability calibration, a regressor's the DLE loss model.
        """
        if g.task == "regression":
            if g.version in state.loss:
                return
            predictions, targets = state.loss_data.setdefault(g.version, ([], []))
            need = self.window_labels - len(predictions)
            predictions.extend(g.scores[:need].tolist())
            targets.extend(g.outcomes[:need].tolist())
            if len(predictions) >= self.window_labels:
                state.loss[g.version] = LossModel.fit(np.array(predictions), np.array(targets),
                                                      bins=CALIBRATION_BINS)
                del state.loss_data[g.version]
            return
        if g.version in state.calibration:
            return
        scores, labels = state.calibration_data.setdefault(g.version, ([], []))
        need = self.window_labels - len(scores)
        scores.extend(g.scores[:need].tolist())
        labels.extend((g.outcomes[:need] == 1.0).tolist())
        if len(scores) >= self.window_labels:
            state.calibration[g.version] = Calibration.fit(np.array(scores), np.array(labels),
                                                           bins=CALIBRATION_BINS)
            del state.calibration_data[g.version]

    def _estimate(self, state: ModelQuality, model: str, g: ScoreGroup) -> list[tuple[Key, Estimate | LossEstimate]]:
        """Count scores into windows of ``window_labels`` by bin; estimate each full window (CBPE or DLE)."""
        key = (g.version, g.variant)
        out: list[tuple[Key, Estimate | LossEstimate]] = []
        if g.task == "regression":
            loss = state.loss.get(g.version)
            if loss is not None:
                for counts in self._windows(state.loss_unlabeled, key, loss.bins(g.scores), len(loss.abs_error)):
                    expected = loss.of_counts(counts)
                    state.estimates[key] = expected.mae
                    out.append(((model, *key), expected))
            return out
        cal = state.calibration.get(g.version)
        if cal is not None:
            for counts in self._windows(state.unlabeled, key, np.searchsorted(cal.edges, g.scores, side="right"),
                                        len(cal.rates)):
                est = estimate(np.repeat(cal.rates, counts), g.threshold)
                state.estimates[key] = est.accuracy
                out.append(((model, *key), est))
        return out

    def _windows(self, unlabeled: dict[tuple[str, str], np.ndarray], key: tuple[str, str], bins: np.ndarray,
                 n_bins: int) -> list[np.ndarray]:
        """Fold bin indices into ``key``'s open window of ``window_labels``; the bin counts of each window filled."""
        full = []
        at = 0
        while at < len(bins):
            counts = unlabeled.get(key)
            if counts is None:
                counts = unlabeled[key] = np.zeros(n_bins, dtype=np.int64)
            chunk = bins[at:at + self.window_labels - int(counts.sum())]
            counts += np.bincount(chunk, minlength=n_bins)
            at += len(chunk)
            if counts.sum() >= self.window_labels:
                full.append(unlabeled.pop(key))
        return full

    def concept_seen(self, model: str, version: str) -> int:
        found = self.models.get(model)
        return 0 if found is None else found.policy.concept_seen(model, version)

    def windows_closed(self, model: str) -> int:
        """Baselines set so far (one per (version, variant) whose first window closed): for logs."""
        found = self.models.get(model)
        return 0 if found is None else len(found.policy.baseline)

    def snapshot(self, model: str) -> dict[str, Any]:
        """The model's quality state as JSON-ready data."""
        s = self._model(model)
        return {
            "format": STATE_FORMAT,
            "policy": s.policy.snapshot(),
            "calibration": [[v, c.to_dict()] for v, c in s.calibration.items()],
            "calibration_data": [[v, scores, labels] for v, (scores, labels) in s.calibration_data.items()],
            "unlabeled": [[v, var, counts.tolist()] for (v, var), counts in s.unlabeled.items()],
            "estimates": [[v, var, value] for (v, var), value in s.estimates.items()],
            "requested": sorted(s.requested),
            "loss": [[v, m.to_dict()] for v, m in s.loss.items()],
            "loss_data": [[v, predictions, targets] for v, (predictions, targets) in s.loss_data.items()],
            "loss_unlabeled": [[v, var, counts.tolist()] for (v, var), counts in s.loss_unlabeled.items()],
            "segments": {k: c.to_dict() for k, c in s.segments.items()}, "segment_labels": s.segment_labels,
            "bias": s.bias.snapshot() if s.bias is not None else None,
        }

    def restore(self, model: str, state: Any) -> None:
        """Replace what the monitor knows of ``model`` with a :meth:`snapshot`; BadRecord leaves it unchanged."""
        try:
            restored = self._parse(model, state)
        except BadRecord as exc:
            raise BadRecord("invalid_state", f"quality state of {brief(model)}: {exc.detail}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # numpy: ints past int64
            raise BadRecord("invalid_state", f"quality state of {brief(model)}: {type(exc).__name__}: {exc}") from None
        self.models[model] = restored

    def _parse(self, model: str, state: Any) -> ModelQuality:
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise BadRecord("invalid_state", f"quality state of {brief(model)} is not format {STATE_FORMAT}")
        policy = QualityPolicy(self.window_labels, self.alpha, self.drop_min, self.concept_kind, self.cooldown_ms)
        policy.restore(state["policy"])
        if any(k[0] != model for k in (*policy.windows, *policy.baseline, *policy.open, *policy.concept,
                                        *policy.reported)):
            raise BadRecord("invalid_state", f"quality state of {brief(model)} holds another model's windows")
        calibration = {}
        for v, d in state["calibration"]:
            cal = Calibration.from_dict(d)
            if len(cal.rates) != len(cal.edges) + 1 or not (np.isfinite(cal.edges).all()
                                                            and ((cal.rates >= 0) & (cal.rates <= 1)).all()):
                raise BadRecord("invalid_state", f"calibration of v{brief(v)} is not one")
            calibration[_name(v, "version")] = cal
        data = {}
        for v, scores, labels in state["calibration_data"]:
            if (len(scores) != len(labels) or len(scores) >= self.window_labels
                    or not all(isinstance(y, bool) for y in labels)):
                raise BadRecord("invalid_state", f"calibration data of v{brief(v)} is not (scores, booleans)")
            data[_name(v, "version")] = ([_number(x, "score") for x in scores], list(labels))
        unlabeled = {}
        for v, var, counts in state["unlabeled"]:
            arr = np.array(counts, dtype=np.int64)
            fitted = calibration.get(v)
            if fitted is None or arr.shape != fitted.rates.shape or (arr < 0).any() or arr.sum() >= self.window_labels:
                raise BadRecord("invalid_state", f"estimate window of v{brief(v)} does not fit its calibration")
            unlabeled[(v, _variant(var))] = arr
        estimates = {(_name(v, "version"), _variant(var)): _number(x, "estimate") for v, var, x in state["estimates"]}
        requested = {_name(v, "version") for v in state["requested"]}
        loss, loss_data, loss_unlabeled = self._parse_loss(state)
        segments, bias = self._parse_segments(state)
        return ModelQuality(policy, calibration, data, unlabeled, estimates, requested, loss, loss_data,
                            loss_unlabeled, segments, int(state.get("segment_labels", 0)) if segments else 0, bias)

    def _parse_segments(self, state: Mapping[str, Any]) -> tuple[dict[str, SegmentCounts], AlertPolicy | None]:
        """The open labeled segment window and the equal-opportunity policy; absent in states written before them."""
        segments = {_name(k, "segment"): segment_from(v, k) for k, v in dict(state.get("segments") or {}).items()}
        labels = state.get("segment_labels", 0)
        if not (type(labels) is int and 0 <= labels < self.window_labels + MAX_VALUES):
            raise BadRecord("invalid_state", "segment_labels must be a count")
        bias = state.get("bias")
        return segments, None if bias is None else policy_from(bias, self.bias_policy)

    def _parse_loss(self, state: Mapping[str, Any]) -> tuple[dict[str, LossModel], dict[str, tuple[list[float],
                                                               list[float]]], dict[tuple[str, str], np.ndarray]]:
        """The DLE part of a snapshot; absent (written before DLE), nothing fitted yet."""
        loss = {}
        for v, d in state.get("loss", []):
            try:
                fitted = LossModel.from_dict(d)
            except ValueError as exc:
                raise BadRecord("invalid_state", f"loss model of v{brief(v)} is not one: {exc}") from None
            loss[_name(v, "version")] = fitted
        data = {}
        for v, predictions, targets in state.get("loss_data", []):
            if (not isinstance(predictions, list) or not isinstance(targets, list) or len(predictions) != len(targets)
                    or len(predictions) >= self.window_labels):
                raise BadRecord("invalid_state", f"loss data of v{brief(v)} is not (predictions, targets)")
            data[_name(v, "version")] = ([_number(x, "prediction") for x in predictions],
                                         [_number(x, "target") for x in targets])
        unlabeled = {}
        for v, var, counts in state.get("loss_unlabeled", []):
            model_of = loss.get(v)
            if (model_of is None or not isinstance(counts, list) or len(counts) != len(model_of.abs_error)
                    or not all(type(c) is int and 0 <= c < 1 << 62 for c in counts)
                    or sum(counts) >= self.window_labels):  # a full window would have closed
                raise BadRecord("invalid_state", f"estimate window of v{brief(v)} does not fit its loss model")
            unlabeled[(v, _variant(var))] = np.array(counts, dtype=np.int64)
        return loss, data, unlabeled

    def forget(self) -> None:
        """Drop all state (the sketches partitions moved: their new owner resumes from the state topic)."""
        self.models.clear()


def _pack(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode()


def _unpack(text: Any, what: str) -> np.ndarray:
    if not isinstance(text, str) or len(text) > MAX_VALUES * 12:
        raise BadRecord("invalid_labels", f"{what} must be base64 text of at most {MAX_VALUES} float64 values")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise BadRecord("invalid_labels", f"{what} is not base64: {exc}") from None
    if len(raw) % 8:
        raise BadRecord("invalid_labels", f"{what} holds {len(raw)} bytes, not a whole number of float64 values")
    values = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    if not np.isfinite(values).all():
        raise BadRecord("invalid_labels", f"{what} holds NaN or infinite values")
    if len(values) and float(np.abs(values).max()) > MAX_MAGNITUDE:
        raise BadRecord("invalid_labels", f"{what} holds a value beyond ±{MAX_MAGNITUDE:g}, which no model predicts "
                                          "(its squared error would overflow the error sums)")
    return values


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRecord("invalid_labels", f"{what} must be an object")
    return value


def _name(value: Any, what: str) -> str:
    return printable_name(value, what, "invalid_labels")


def _task(value: Any) -> str:
    if value not in TASKS:
        raise BadRecord("invalid_labels", f"task must be one of {', '.join(TASKS)}, not {brief(value)}")
    return str(value)


def _variant(value: Any) -> str:
    if value not in VARIANTS:
        raise BadRecord("invalid_labels", f"variant must be one of {', '.join(sorted(VARIANTS))}, not {brief(value)}")
    return str(value)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRecord("invalid_labels", f"{what} must be a finite number, not {brief(value)}")
    return float(value)


def parse_sketches_record(value: bytes | None, drift: DriftMonitor, quality: QualityMonitor,
                          now_ms: int) -> WindowSketch | LabelBatch | Skip:
    """A record of ``{ns}.sketches``: a window sketch or a label batch to fold, or why not; never raises."""
    try:
        data = load_json(value)
        if is_label_batch(data):
            batch = read_label_batch(data)
            quality.check(batch)
            return batch
        sketch = sketch_from_dict(data)
        drift.check(sketch, now_ms)
    except BadRecord as exc:
        return exc.skip()
    return sketch


def resume_quality(quality: QualityMonitor, model: str, value: bytes | None) -> Skip | None:
    """Restore ``model`` from the ``quality`` part of its ``{ns}.drift-state`` record; why not; never raises.

    A state record without that part (written before quality state was kept) leaves the monitor fresh.
    """
    try:
        state = load_json(value)
        if isinstance(state, Mapping) and "quality" in state:
            quality.restore(model, state["quality"])
    except BadRecord as exc:
        return exc.skip()
    return None
