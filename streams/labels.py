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

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import faust
import numpy as np
from confluent_kafka import Producer

from detectors.concept import ConceptDetector
from detectors.estimate import Calibration, estimate
from detectors.quality import QualitySketch, accuracy_drop
from schemas.catalog import SchemaCatalog
from schemas.codec import decode, encode
from streams.alerts import point_alert
from streams.clients import BatchSource
from streams.feedback import FeedbackJoin, Joined, Label, Scored
from streams.metrics import Metrics
from streams.observe import Recent
from streams.pipeline import ERROR_HEADER, OutRecord, RawMessage, ServedModel
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class QualityTracker:
    """Quality windows, baselines and concept detectors of every (model, version[, variant])."""

    window_labels: int
    alpha: float
    drop_min: float
    concept_kind: str
    windows: dict[tuple[str, str, str], QualitySketch] = field(default_factory=dict)
    baseline: dict[tuple[str, str, str], float] = field(default_factory=dict)
    open: set[tuple[str, str, str]] = field(default_factory=set)  # keys with a performance_drop incident open
    concept: dict[tuple[str, str], ConceptDetector] = field(default_factory=dict)

    def add(self, j: Joined, task: str, threshold: float, positive: str) -> tuple[
            list[tuple[tuple[str, str, str], QualitySketch, dict[str, float] | None]], bool]:
        """Fold one labeled event; returns (closed windows with a drop verdict, concept change point?).

        Per event, with the sketch's scalar folds (a few microseconds): labels
        arrive one by one from the join, and numpy's per-call overhead would dominate.
        """
        s, lab = j.scored, j.label
        key = (s.model, s.version, s.variant)
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = QualitySketch()
        if task == "regression":
            if lab.target is None:
                return [], False
            error = w.add_error(lab.target, s.score)
        else:
            error = float(w.add_decision(lab.label == positive, s.score, threshold))
        detector = self.concept.get((s.model, s.version))
        if detector is None:
            kind = self.concept_kind if task != "regression" else "adwin"
            detector = self.concept[(s.model, s.version)] = ConceptDetector(kind)
        change = detector.update(error)
        out: list[tuple[tuple[str, str, str], QualitySketch, dict[str, float] | None]] = []
        if w.n >= self.window_labels:
            del self.windows[key]
            out.append((key, w, self._verdict(key, w) if task != "regression" else None))
        return out, change

    def _verdict(self, key: tuple[str, str, str], window: QualitySketch) -> dict[str, float] | None:
        """A performance_drop to raise, or None. One alert per incident: it stays open until a window recovers."""
        if key not in self.baseline:
            self.baseline[key] = window.accuracy
            return None
        base = self.baseline[key]
        p, below = accuracy_drop(base, window, self.alpha)
        dropped = p < self.alpha and base - window.accuracy >= self.drop_min
        if not dropped:
            self.open.discard(key)
            return None
        if key in self.open:
            return None
        self.open.add(key)
        return {"baseline": base, "accuracy": window.accuracy, "p_value": p, "threshold": below}


def quality_alert(key: tuple[str, str, str], kind: str, value: float, threshold: float, n: int, message: str,
                  now_ms: int, severity: str = "critical") -> dict[str, Any]:
    model, version, variant = key
    statistic = "accuracy" if kind == "performance_drop" else "error_rate"
    return point_alert(model, version, kind, statistic, value, threshold, message, now_ms, sample_size=n,
                       scope=(variant,), severity=severity)


class FeedbackAgent:
    """The join and quality bookkeeping of one worker, fed with raw records, returning records to produce.

    Synchronous and clock-driven (``now_ms`` passed in): the worker's task
    moves bytes between a librdkafka consumer and producer around it. Faust's
    per-event path was measured at under 100 joined labels a second here (one
    awaited send per record), far below the score path; batches through
    librdkafka keep up with it.
    """

    def __init__(self, settings: Settings, catalog: SchemaCatalog, served: dict[str, ServedModel],
                 metrics: Metrics, recent: Recent) -> None:
        self.settings, self.catalog, self.served, self.metrics, self.recent = settings, catalog, served, metrics, recent
        self.scored_topic, self.feedback_topic = settings.topic("scored"), settings.topic("feedback")
        self.join = FeedbackJoin(int(settings.feedback_ttl_s * 1000))
        self.tracker = QualityTracker(settings.quality_window_labels, settings.drift_alpha,
                                      settings.performance_drop_min, settings.concept_detector)
        self.labeled_schema = catalog.latest("driftline.Labeled")
        self.alert_schema = catalog.latest("driftline.Alert")
        self.retrain_schema = catalog.latest("driftline.RetrainRequest")
        self.requested: set[tuple[str, str]] = set()  # one concept-drift retrain request per (model, version)
        self.reported_duplicates = 0
        # Label-free estimate: calibrated on each version's first labeled window, applied to its scores.
        self.calibration: dict[tuple[str, str], Calibration] = {}
        self.calibration_data: dict[tuple[str, str], list[tuple[float, bool]]] = {}
        self.unlabeled: dict[tuple[str, str, str], list[float]] = {}
        self.estimates: dict[tuple[str, str, str], float] = {}

    def _estimate(self, sc: Scored) -> None:
        """Fold a prediction's score into its window; estimate the window's quality once full."""
        served = self.served.get(sc.model)
        cal = self.calibration.get((sc.model, sc.version))
        if served is None or cal is None or served.model.manifest.task == "regression":
            return
        key = (sc.model, sc.version, sc.variant)
        scores = self.unlabeled.setdefault(key, [])
        scores.append(sc.score)
        if len(scores) < self.settings.quality_window_labels:
            return
        est = estimate(cal.apply(np.array(scores)), served.model.manifest.threshold)
        del self.unlabeled[key]
        self.estimates[key] = est["accuracy"]
        for name, value in est.items():
            self.metrics.quality_estimate.labels(*key, name).set(value)

    def _calibrate(self, j: Joined, positive: str) -> None:
        key = (j.scored.model, j.scored.version)
        if key in self.calibration or j.scored.variant == "shadow":
            return
        data = self.calibration_data.setdefault(key, [])
        data.append((j.scored.score, j.label.label == positive))
        if len(data) >= self.settings.quality_window_labels:
            scores, labels = zip(*data, strict=True)
            self.calibration[key] = Calibration.fit(np.array(scores), np.array(labels), bins=10)
            del self.calibration_data[key]

    def process(self, messages: list[RawMessage], now_ms: int) -> list[OutRecord]:
        out: list[OutRecord] = []
        for msg in messages:
            try:
                rec = decode(self.catalog, msg.value, fast=True)[1]
            except (ValueError, KeyError, EOFError, TypeError) as exc:
                if msg.topic == self.feedback_topic:
                    out.append(self._dead(msg.key, msg.value, "malformed_feedback", str(exc), now_ms))
                else:
                    log.warning("ignored a scored record that does not decode: %s", exc)
                continue
            if msg.topic == self.scored_topic:
                sc = Scored(rec["request_id"], rec["model"], rec["model_version"], rec["variant"],
                            float(rec["score"]), rec.get("predicted"), int(rec["event_time"]), bytes(rec["features"]))
                joined = self.join.add_prediction(sc, now_ms)
                self._estimate(sc)
            else:
                if rec.get("label") is None and rec.get("target") is None:
                    out.append(self._dead(msg.key, msg.value, "bad_feedback", "a label or a target is required",
                                          now_ms))
                    continue
                target = rec.get("target")
                label = Label(rec["request_id"], rec.get("label"), None if target is None else float(target),
                              int(rec["event_time"]), (msg.key, msg.value))
                joined = self.join.add_label(label, now_ms)
                self.metrics.labels.labels("-", "received").inc()
            for j in joined:
                out.extend(self._use(j, now_ms))
        return out

    def tick(self, now_ms: int) -> list[OutRecord]:
        """Labels whose prediction never came within the TTL: dead letters."""
        out = []
        for lab in self.join.expire(now_ms):
            key, value = lab.raw if lab.raw is not None else (None, None)
            out.append(self._dead(key, value, "no_prediction", f"no prediction for request {lab.request_id} within "
                                  f"feedback_ttl_s={self.settings.feedback_ttl_s:g}", now_ms))
            self.metrics.labels.labels("-", "no_prediction").inc()
        dup = self.join.counts.duplicates
        self.metrics.labels.labels("-", "duplicate").inc(dup - self.reported_duplicates)
        self.reported_duplicates = dup
        return out

    def _dead(self, key: bytes | None, value: bytes | None, reason: str, message: str, now_ms: int) -> OutRecord:
        when = datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        headers = [(ERROR_HEADER + k, v.encode()) for k, v in {
            "topic": self.feedback_topic, "stage": "feedback", "reason": reason, "exception.message": message,
            "timestamp": when}.items()]
        self.metrics.dead_letters.labels("-", "feedback", reason).inc()
        return OutRecord(self.settings.topic("deadletter"), key, value, headers)

    def _use(self, j: Joined, now: int) -> list[OutRecord]:
        s, lab = j.scored, j.label
        rec = {"request_id": s.request_id, "model": s.model, "model_version": s.version, "variant": s.variant,
               "score": s.score, "predicted": s.predicted, "label": lab.label, "target": lab.target,
               "event_time": s.event_time, "label_time": lab.event_time, "features": s.features}
        out = [OutRecord(self.settings.topic("labeled"), s.request_id.encode(),
                         encode(self.labeled_schema, rec, fast=True))]
        if s.variant != "shadow":
            self.metrics.labels.labels(s.model, "joined").inc()
        served = self.served.get(s.model)
        if served is None:
            return out
        m = served.model.manifest
        if m.task != "regression":
            self._calibrate(j, m.labels[1])
        closed, change = self.tracker.add(j, m.task, m.threshold, m.labels[1])
        for key, window, verdict in closed:
            for name, value in window.metrics(m.task).items():
                self.metrics.quality.labels(key[0], key[1], key[2], name).set(value)
            if key in self.estimates:  # how far the label-free estimate was from the truth
                self.metrics.quality_estimate_gap.labels(*key).set(self.estimates[key] - window.accuracy)
            if verdict is not None:
                out.append(self._alert(quality_alert(
                    key, "performance_drop", verdict["accuracy"], verdict["threshold"], window.n,
                    f"accuracy {verdict['accuracy']:.3f} vs {verdict['baseline']:.3f} at first "
                    f"(p={verdict['p_value']:.2g}, {window.n} labels)", now)))
        if change and s.variant != "shadow":
            seen = self.tracker.concept[(s.model, s.version)].seen
            kind = self.settings.concept_detector if m.task != "regression" else "adwin"
            rec = quality_alert((s.model, s.version, s.variant), "concept_drift", 1.0, 0.0, seen,
                                f"{kind} saw the error rate change after {seen} labeled events", now)
            out.append(self._alert(rec))
            if (s.model, s.version) not in self.requested:  # the concept moved: train on labels from now on
                self.requested.add((s.model, s.version))
                text = f"{s.model}|{s.version}|concept_drift|{now}"
                req = {"id": hashlib.sha256(text.encode()).hexdigest()[:32], "model": s.model,
                       "model_version": s.version, "stage": "requested",
                       "reason": f"concept drift on v{s.version}: {rec['message']}", "alert_ids": [rec["id"]],
                       "data_start": now, "data_end": now, "requested_at": now, "candidate_version": None}
                log.info("retrain requested for %s: %s", s.model, req["reason"])
                self.metrics.retrains.labels(s.model).inc()
                out.append(OutRecord(self.settings.topic("retrain"), s.model.encode(),
                                     encode(self.retrain_schema, req, fast=True)))
        return out

    def _alert(self, rec: dict[str, Any]) -> OutRecord:
        log.info("alert %s %s: %s", rec["severity"], rec["kind"], rec["message"])
        self.metrics.alerts.labels(rec["model"], rec["kind"], rec["severity"]).inc()
        self.recent.add_alert(rec)
        value = encode(self.alert_schema, rec, fast=True)
        return OutRecord(self.settings.topic("alerts"), rec["model"].encode(), value)


def add_feedback_agent(app: faust.App, settings: Settings, catalog: SchemaCatalog,
                       served: dict[str, ServedModel], metrics: Metrics, recent: Recent) -> None:
    """A task that feeds :class:`FeedbackAgent` in batches from its own consumer group.

    The group ``{ns}-feedback`` uses the range assignor, which hands a member
    the same partition numbers of both topics (equal partition counts): the
    join stays local. Offsets are committed as consumed; the pending joins
    live in memory, so after a restart labels whose prediction came before it
    find none and go to the dead letters after the TTL.
    """
    agent = FeedbackAgent(settings, catalog, served, metrics, recent)
    conf = {**settings.consumer_config(f"{settings.namespace}-feedback"),
            "partition.assignment.strategy": "range", "enable.auto.offset.store": True}
    source = BatchSource(conf, [agent.scored_topic, agent.feedback_topic])
    producer = Producer({**settings.producer_config(), "enable.idempotence": False})
    thread = ThreadPoolExecutor(1, thread_name_prefix="driftline-feedback")
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    def send(records: list[OutRecord]) -> None:
        for r in records:
            producer.produce(r.topic, r.value, r.key, headers=cast(Any, r.headers), on_delivery=delivered)
        producer.poll(0)
        if failures:
            log.error("feedback outputs not delivered: %s", failures[:3])
            failures.clear()

    @app.task
    async def feedback() -> None:
        loop = asyncio.get_running_loop()
        next_tick = 0.0
        try:
            while not app.should_stop:
                msgs = await loop.run_in_executor(thread, source.poll_batch, 5000, 0.2)
                now = time.time()
                send(agent.process(msgs, int(now * 1000)))
                if now >= next_tick:
                    next_tick = now + 1.0
                    send(agent.tick(int(now * 1000)))
        finally:
            producer.flush(10)
            thread.submit(source.close)
            thread.shutdown(wait=False)
