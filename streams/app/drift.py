"""The drift agent: per model, merges the workers' window sketches and label batches; raises alerts and retrains.

Low volume (one sketch per worker per window, one label batch per feedback
batch), so a plain Faust agent with Faust's producer. A model's state — the
drift alert policy, River detectors, pending windows, the quality windows,
baselines, concept detectors, CBPE calibration and DLE loss model
(``{ns}.sketches`` position of the last record applied included) — is
written to ``{ns}.drift-state`` after every change and read back when this
worker takes the sketches partition over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import faust

from driftline.detectors.policy import PolicyConfig
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.drift import DriftMonitor, alert_record, resume, retrain_record
from driftline.streams.core.events import Alert, RetrainEvent, encode_event
from driftline.streams.core.impact import ImpactRanker
from driftline.streams.core.observe import Recent
from driftline.streams.core.poison import Skip, SkipLog
from driftline.streams.core.profiling import ProfileStore, has_version
from driftline.streams.core.quality import LabelBatch, QualityMonitor, Verdicts, parse_sketches_record, resume_quality
from driftline.streams.errors import BrokerError
from driftline.streams.kafka.topics import iter_topic
from driftline.streams.metrics import Metrics
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)


class StateRecord(NamedTuple):
    """The last record of one model on the state topic, and where it is (for the log if it is skipped)."""

    value: bytes | None
    partition: int
    offset: int


def latest_states(conf: Mapping[str, Any], topic: str) -> dict[str, StateRecord]:
    """The last state record per model (the key), read from the start (compaction is not relied on)."""
    latest: dict[str, StateRecord] = {}
    for msg in iter_topic(conf, topic):
        key = msg.key()
        if key is None:
            continue
        model = key.decode(errors="replace")
        if msg.value() is None:
            latest.pop(model, None)  # a tombstone
        else:
            latest[model] = StateRecord(msg.value(), int(msg.partition()), int(msg.offset()))
    return latest


def add_drift_agent(app: faust.App, settings: Settings, catalog: SchemaCatalog, metrics: Metrics,
                    recent: Recent) -> None:
    """Merge the workers' window sketches per model, evaluate closed windows, send alerts and retrains.

    The sketches topic is keyed by model, so one worker sees all sketches of
    a model; low volume, so a plain Faust agent with Faust's producer.
    """
    alert_schema = catalog.latest("driftline.Alert")
    retrain_schema = catalog.latest("driftline.RetrainRequest")
    # Each version against its own reference: sketches of another worker may name any version.
    registry = ModelRegistry(settings.model_dir)
    profiles = ProfileStore(registry, catalog)
    policy = PolicyConfig(alpha=settings.drift_alpha, k=settings.drift_k, m=settings.drift_m,
                          cooldown=settings.drift_cooldown_windows, retrain_cooldown=settings.retrain_cooldown_windows,
                          detector=settings.drift_detector)
    monitor = DriftMonitor(
        profiles.get,
        policy,
        grace_ms=int(settings.window_grace_s * 1000),
        expected_dead_letter_rate=settings.expected_dead_letter_rate,
        expected_duplicate_rate=settings.expected_duplicate_rate,
        max_pending=settings.drift_max_pending_windows,
        max_skew_ms=int(settings.sketch_max_skew_s * 1000),
        bias_bound=settings.bias_max_difference,
        bias_max_values=settings.bias_max_values,
    )
    quality = QualityMonitor(settings.quality_window_labels, settings.drift_alpha, settings.performance_drop_min,
                             settings.concept_detector, known=lambda m, v: has_version(registry, m, v),
                             cooldown_ms=int(settings.performance_drop_cooldown_s * 1000),
                             bias_policy=replace(policy, detector="none"), bias_bound=settings.bias_max_difference,
                             bias_max_values=settings.bias_max_values)
    ranker = ImpactRanker(registry, settings.drift_alpha, verify_key=settings.model_verify_key()) \
        if settings.drift_impact else None
    skips = SkipLog(log, metrics.skipped)
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    sketches_name, state_name = settings.topic("sketches"), settings.topic("drift-state")
    sketches = app.topic(sketches_name, partitions=settings.partitions.sketches, **raw)
    alerts = app.topic(settings.topic("alerts"), partitions=settings.partitions.alerts, **raw)
    retrains = app.topic(settings.topic("retrain"), partitions=settings.partitions.retrain, **raw)
    states = app.topic(state_name, partitions=settings.partitions.drift_state, **raw)
    lookback_ms = int(settings.window_s * 1000) * settings.drift_m
    resumed: set[str] = set()  # models whose state this worker has taken over since its last assignment
    stored: dict[str, StateRecord] = {}  # the state topic as read at that time, by model

    async def take_over(model: str) -> None:
        """Resume a model's drift state from the state topic before its first sketch here."""
        if model in resumed:
            return
        if not resumed and not stored:
            loop = asyncio.get_running_loop()
            try:
                latest = await loop.run_in_executor(None, latest_states, settings.confluent(), state_name)
            except BrokerError as exc:
                log.error("cannot read the drift state (%s); alert policies start afresh", exc)
                latest = {}
            stored.update(latest)
        resumed.add(model)
        found = stored.pop(model, None)
        if found is None:
            return
        skipped = resume(monitor, model, found.value, int(time.time() * 1000))
        if skipped is not None:
            skips.skip(state_name, found.partition, found.offset, model.encode(), skipped)
            log.warning("drift state of %s is not usable; its alert policy starts afresh", model)
            return
        log.info("resumed drift state of %s after window %d", model, monitor.window_count(model))
        skipped = resume_quality(quality, model, found.value)
        if skipped is not None:
            skips.skip(state_name, found.partition, found.offset, model.encode(), skipped)
            log.warning("quality state of %s is not usable (%s); its quality windows start afresh", model,
                        skipped.detail)
            return
        if model in quality.models:
            log.info("resumed quality state of %s: %d baselines, %d labeled events seen by its concept detectors",
                     model, quality.windows_closed(model),
                     sum(d.seen for d in quality.models[model].policy.concept.values()))

    async def save(model: str) -> None:
        """Write the model's state and wait for the broker: the sketch offset is committed after this."""
        state = {**monitor.snapshot(model), "quality": quality.snapshot(model)}
        fut = await states.send(key=model.encode(), value=json.dumps(state).encode())
        await fut

    async def send_events(model: str, raised: Sequence[Alert], retrain: RetrainEvent | None) -> None:
        for alert in raised:
            log.info("alert %s %s: %s", alert.severity, alert.kind, alert.message,
                     extra={"event": "alert", "model": alert.model, "version": alert.model_version,
                            "kind": alert.kind, "severity": alert.severity})
            recent.add_alert(alert)
            await alerts.send(key=model.encode(), value=encode_event(alert_schema, alert))
        if retrain is not None:
            log.info("retrain requested for %s: %s", model, retrain.reason)
            await retrains.send(key=model.encode(), value=encode_event(retrain_schema, retrain))

    async def fold_labels(batch: LabelBatch) -> None:
        verdicts = quality.apply(batch, int(time.time() * 1000))
        observe_quality(metrics, verdicts)
        for alert in verdicts.alerts:
            await send_events(batch.model, (alert,), None)
        for request in verdicts.retrains:
            await send_events(batch.model, (), request)

    @app.on_partitions_revoked.connect
    async def release(_app: Any, /, *args: Any, signal: Any, **_kw: Any) -> None:
        revoked = args[0] if args else ()
        if any(tp.topic == sketches_name for tp in revoked):
            monitor.forget()  # the next owner (maybe this worker again) resumes from the state topic
            quality.forget()
            resumed.clear()
            stored.clear()

    @app.agent(sketches)
    async def drift(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            record = parse_sketches_record(event.value, monitor, quality, int(time.time() * 1000))
            if isinstance(record, Skip):
                skips.skip(sketches_name, msg.partition, msg.offset, event.key, record)
                continue
            await take_over(record.model)
            if isinstance(record, LabelBatch):
                if monitor.mark_applied(record.model, (msg.partition, msg.offset)):
                    await fold_labels(record)
                    await save(record.model)
            elif monitor.add(record, (msg.partition, msg.offset)):
                await save(record.model)

    @app.timer(interval=0.5)
    async def close_windows() -> None:
        now = int(time.time() * 1000)
        closed = monitor.close_due(now)
        loop = asyncio.get_running_loop()
        for window in closed:
            sketch, decisions, retrain, _ = window
            metrics.observe_window(window)
            recent.add_window(window)
            # a few ONNX calls when a window raises data-drift alerts: off the event loop, once per window
            ranked = {} if ranker is None else await loop.run_in_executor(
                None, ranker.rank, window, profiles.get(sketch.model, sketch.version))
            raised = [alert_record(sketch, d, now, ranked) for d in decisions]
            request = None if retrain is None else retrain_record(sketch, retrain, [a.id for a in raised],
                                                                  lookback_ms, now)
            await send_events(sketch.model, raised, request)
        for model in sorted({window.sketch.model for window in closed}):
            await save(model)


def observe_quality(metrics: Metrics, verdicts: Verdicts) -> None:
    """Quality gauges of closed windows and estimates; counters of the quality alerts and retrain requests."""
    for closed in verdicts.closed:
        for name, value in closed.window.metrics(closed.task).items():
            metrics.quality.labels(*closed.key, name).set(value)
        if closed.estimate_gap is not None:  # how far the label-free estimate was from the truth
            metrics.quality_estimate_gap.labels(*closed.key).set(closed.estimate_gap)
    for key, est in verdicts.estimates:
        for name, value in est.items():
            metrics.quality_estimate.labels(*key, name).set(value)
    for alert in verdicts.alerts:
        metrics.alerts.labels(alert.model, alert.kind, alert.severity).inc()
    for request in verdicts.retrains:
        metrics.retrains.labels(request.model).inc()
    for model, segment, counts in verdicts.segments:
        metrics.observe_segments(model, segment, counts, labeled=True)
