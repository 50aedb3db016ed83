"""The feedback agent: late labels joined to predictions, live quality, performance drops and concept drift.

With ``feedback`` on, the score path also emits every prediction with its
input row to ``{ns}.scored``; labels arrive on ``{ns}.feedback``. Both are
keyed by request id and have the same partition count (and driftline's
producers use the Java client's partitioner), so Faust hands a worker the
same partitions of both and the join is local. Joined pairs go to
``{ns}.labeled`` (what the trainer reads); labels with no prediction after
the TTL go to the dead letters with reason ``no_prediction``.

Per (model, version, variant), labeled events are counted into quality
windows of ``quality_window_labels``; each closed window sets the quality
gauges and is tested against the version's first window (a one-sided,
sample-size-aware accuracy test): a significant drop of at least
``performance_drop_min`` raises a ``performance_drop`` alert. Every labeled
event also feeds a River concept-drift detector per (model, version) with
the decision's error; a change point raises a ``concept_drift`` alert.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
import numpy as np
from fastavro import schemaless_reader

from detectors.concept import ConceptDetector
from detectors.quality import QualitySketch, accuracy_drop
from schemas.catalog import SchemaCatalog
from schemas.codec import HEADER, MAGIC, encode
from streams.feedback import FeedbackJoin, Joined, Label, Scored
from streams.metrics import Metrics
from streams.observe import Recent
from streams.pipeline import ERROR_HEADER, ServedModel
from streams.settings import Settings

log = logging.getLogger(__name__)
COOLDOWN_WINDOWS = 5


def decode_fast(catalog: SchemaCatalog, value: bytes | None) -> dict[str, Any]:
    """One framed record with its writer schema, timestamps as ints (ValueError/KeyError when it is not one)."""
    if value is None or len(value) < HEADER.size or value[0] != MAGIC:
        raise ValueError("not a Confluent-framed Avro message")
    _, sid = HEADER.unpack_from(value)
    schema = catalog.by_id(sid)
    if schema is None:
        raise KeyError(f"unknown schema id {sid}")
    return dict(schemaless_reader(io.BytesIO(value[HEADER.size:]), schema.fast, None))  # type: ignore[arg-type]


@dataclass
class QualityTracker:
    """Quality windows, baselines and concept detectors of every (model, version[, variant])."""

    window_labels: int
    alpha: float
    drop_min: float
    concept_kind: str
    windows: dict[tuple[str, str, str], QualitySketch] = field(default_factory=dict)
    closed: dict[tuple[str, str, str], int] = field(default_factory=dict)
    baseline: dict[tuple[str, str, str], float] = field(default_factory=dict)
    last_alert: dict[tuple[str, str, str], int] = field(default_factory=dict)
    concept: dict[tuple[str, str], ConceptDetector] = field(default_factory=dict)

    def add(self, j: Joined, task: str, threshold: float, positive: str) -> tuple[
            list[tuple[tuple[str, str, str], QualitySketch, dict[str, float] | None]], bool]:
        """Fold one labeled event; returns (closed windows with a drop verdict, concept change point?)."""
        s, lab = j.scored, j.label
        key = (s.model, s.version, s.variant)
        if task == "regression":
            if lab.target is None:
                return [], False
            q = QualitySketch.of_regressor(np.array([lab.target]), np.array([s.score]))
            error = abs(s.score - lab.target)
        else:
            truth = np.array([lab.label == positive])
            q = QualitySketch.of_classifier(truth, np.array([s.score]), threshold)
            error = float((s.score >= threshold) != truth[0])
        self.windows[key] = self.windows[key] + q if key in self.windows else q
        detector = self.concept.setdefault((s.model, s.version), ConceptDetector(
            self.concept_kind if task != "regression" else "adwin"))
        change = detector.update_many(np.array([error])) is not None
        out: list[tuple[tuple[str, str, str], QualitySketch, dict[str, float] | None]] = []
        window = self.windows[key]
        if window.n >= self.window_labels:
            del self.windows[key]
            index = self.closed[key] = self.closed.get(key, 0) + 1
            verdict = None
            if task != "regression":
                if key not in self.baseline:
                    self.baseline[key] = window.accuracy
                else:
                    base = self.baseline[key]
                    p, below = accuracy_drop(base, window, self.alpha)
                    last = self.last_alert.get(key)
                    cooled = last is None or index - last > COOLDOWN_WINDOWS
                    if p < self.alpha and base - window.accuracy >= self.drop_min and cooled:
                        self.last_alert[key] = index
                        verdict = {"baseline": base, "accuracy": window.accuracy, "p_value": p, "threshold": below}
            out.append((key, window, verdict))
        return out, change


def quality_alert(key: tuple[str, str, str], kind: str, value: float, threshold: float, n: int, message: str,
                  now_ms: int, severity: str = "critical") -> dict[str, Any]:
    model, version, variant = key
    text = f"{model}|{version}|{variant}|{kind}|{now_ms}"
    return {
        "id": hashlib.sha256(text.encode()).hexdigest()[:32], "model": model, "model_version": version,
        "kind": kind, "severity": severity, "feature": None,
        "statistic": "accuracy" if kind == "performance_drop" else "error_rate", "value": float(value),
        "threshold": float(threshold), "window_start": now_ms, "window_end": now_ms, "sample_size": int(n),
        "reference_size": 0, "top_bins": [], "message": message, "created_at": now_ms,
    }


def add_feedback_agent(app: faust.App, settings: Settings, catalog: SchemaCatalog,
                       served: dict[str, ServedModel], metrics: Metrics, recent: Recent) -> None:
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    scored_name, feedback_name = settings.topic("scored"), settings.topic("feedback")
    inputs = app.topic(scored_name, feedback_name, partitions=settings.partitions.scored, **raw)
    labeled = app.topic(settings.topic("labeled"), partitions=settings.partitions.labeled, **raw)
    deadletter = app.topic(settings.topic("deadletter"), partitions=settings.partitions.deadletter, **raw)
    alerts = app.topic(settings.topic("alerts"), partitions=settings.partitions.alerts, **raw)
    retrains = app.topic(settings.topic("retrain"), partitions=settings.partitions.retrain, **raw)
    retrain_schema = catalog.latest("driftline.RetrainRequest")
    requested: set[tuple[str, str]] = set()  # one concept-drift retrain request per (model, version)
    labeled_schema = catalog.latest("driftline.Labeled")
    alert_schema = catalog.latest("driftline.Alert")
    join = FeedbackJoin(int(settings.feedback_ttl_s * 1000))
    tracker = QualityTracker(settings.quality_window_labels, settings.drift_alpha, settings.performance_drop_min,
                             settings.concept_detector)

    def manifest_of(model: str) -> Any:
        s = served.get(model)
        return s.model.manifest if s is not None else None

    async def dead(value: bytes | None, key: bytes | None, reason: str, message: str, topic: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        headers = [(ERROR_HEADER + k, v.encode()) for k, v in {
            "topic": topic, "stage": "feedback", "reason": reason, "exception.message": message,
            "timestamp": now}.items()]
        metrics.dead_letters.labels("-", "feedback", reason).inc()
        await deadletter.send(key=key, value=value, headers=headers)

    async def use(j: Joined) -> None:
        s, lab = j.scored, j.label
        now = int(time.time() * 1000)
        rec = {"request_id": s.request_id, "model": s.model, "model_version": s.version, "variant": s.variant,
               "score": s.score, "predicted": s.predicted, "label": lab.label, "target": lab.target,
               "event_time": s.event_time, "label_time": lab.event_time, "features": s.features}
        await labeled.send(key=s.request_id.encode(), value=encode(labeled_schema, rec, fast=True))
        metrics.labels.labels(s.model, "joined").inc()
        m = manifest_of(s.model)
        if m is None:
            return
        closed, change = tracker.add(j, m.task, m.threshold, m.labels[1])
        for key, window, verdict in closed:
            for name, value in window.metrics(m.task).items():
                metrics.quality.labels(key[0], key[1], key[2], name).set(value)
            if verdict is not None:
                rec = quality_alert(key, "performance_drop", verdict["accuracy"], verdict["threshold"], window.n,
                                    f"accuracy {verdict['accuracy']:.3f} vs {verdict['baseline']:.3f} at first "
                                    f"(p={verdict['p_value']:.2g}, {window.n} labels)", now)
                await send_alert(rec)
        if change:
            key = (s.model, s.version, s.variant)
            rec = quality_alert(key, "concept_drift", 1.0, 0.0, tracker.concept[(s.model, s.version)].seen,
                                f"{settings.concept_detector if m.task != 'regression' else 'adwin'} saw the error "
                                f"rate change after {tracker.concept[(s.model, s.version)].seen} labeled events", now)
            await send_alert(rec)
            if (s.model, s.version) not in requested:  # the concept moved: train on labels from now on
                requested.add((s.model, s.version))
                text = f"{s.model}|{s.version}|concept_drift|{now}"
                req = {"id": hashlib.sha256(text.encode()).hexdigest()[:32], "model": s.model,
                       "model_version": s.version, "stage": "requested",
                       "reason": f"concept drift on v{s.version}: {rec['message']}", "alert_ids": [rec["id"]],
                       "data_start": now, "data_end": now, "requested_at": now, "candidate_version": None}
                log.info("retrain requested for %s: %s", s.model, req["reason"])
                metrics.retrains.labels(s.model).inc()
                await retrains.send(key=s.model.encode(), value=encode(retrain_schema, req, fast=True))

    async def send_alert(rec: dict[str, Any]) -> None:
        log.info("alert %s %s: %s", rec["severity"], rec["kind"], rec["message"])
        metrics.alerts.labels(rec["model"], rec["kind"], rec["severity"]).inc()
        recent.add_alert(rec)
        await alerts.send(key=rec["model"].encode(), value=encode(alert_schema, rec, fast=True))

    @app.agent(inputs)
    async def feedback(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            now = int(time.time() * 1000)
            try:
                rec = decode_fast(catalog, event.value)
            except (ValueError, KeyError, EOFError, TypeError) as exc:
                if msg.topic == feedback_name:
                    await dead(event.value, event.key, "malformed_feedback", str(exc), msg.topic)
                else:
                    log.warning("ignored a scored record that does not decode: %s", exc)
                continue
            if msg.topic == scored_name:
                s = Scored(rec["request_id"], rec["model"], rec["model_version"], rec["variant"], float(rec["score"]),
                           rec.get("predicted"), int(rec["event_time"]), bytes(rec["features"]))
                joined = join.add_prediction(s, now)
            else:
                if "request_id" not in rec or (rec.get("label") is None and rec.get("target") is None):
                    await dead(event.value, event.key, "bad_feedback", "a label or a target is required", msg.topic)
                    continue
                target = rec.get("target")
                joined = join.add_label(Label(rec["request_id"], rec.get("label"),
                                              None if target is None else float(target), int(rec["event_time"]),
                                              (event.key, event.value)), now)
                metrics.labels.labels("-", "received").inc()
            for j in joined:
                await use(j)

    reported = {"duplicates": 0}

    @app.timer(interval=1.0)
    async def expire_labels() -> None:
        for lab in join.expire(int(time.time() * 1000)):
            key, value = lab.raw if lab.raw is not None else (None, None)
            await dead(value, key, "no_prediction",
                       f"no prediction for request {lab.request_id} within feedback_ttl_s={settings.feedback_ttl_s:g}",
                       feedback_name)
            metrics.labels.labels("-", "no_prediction").inc()
        metrics.labels.labels("-", "duplicate").inc(join.counts.duplicates - reported["duplicates"])
        reported["duplicates"] = join.counts.duplicates
