"""The drift agent: merges the workers' window sketches per model and raises alerts and retrain requests.

Low volume (one sketch per worker per window), so a plain Faust agent with
Faust's producer. Its state (alert policy, River detectors, pending windows,
the last sketch applied) is written to ``{ns}.drift-state`` after every
change and read back when this worker takes the sketches partition over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import faust

from driftline.detectors.policy import PolicyConfig
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.drift import DriftMonitor, alert_record, parse_sketch, resume, retrain_record
from driftline.streams.core.events import encode_event
from driftline.streams.core.observe import Recent
from driftline.streams.core.poison import Skip, SkipLog
from driftline.streams.core.profiling import ProfileStore
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
    profiles = ProfileStore(ModelRegistry(settings.model_dir))
    monitor = DriftMonitor(
        profiles.get,
        PolicyConfig(alpha=settings.drift_alpha, k=settings.drift_k, m=settings.drift_m,
                     cooldown=settings.drift_cooldown_windows, retrain_cooldown=settings.retrain_cooldown_windows,
                     detector=settings.drift_detector),
        grace_ms=int(settings.window_grace_s * 1000),
        expected_dead_letter_rate=settings.expected_dead_letter_rate,
        max_pending=settings.drift_max_pending_windows,
        max_skew_ms=int(settings.sketch_max_skew_s * 1000),
    )
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

    async def save(model: str) -> None:
        """Write the model's state and wait for the broker: the sketch offset is committed after this."""
        fut = await states.send(key=model.encode(), value=json.dumps(monitor.snapshot(model)).encode())
        await fut

    @app.on_partitions_revoked.connect
    async def release(_app: Any, /, *args: Any, signal: Any, **_kw: Any) -> None:
        revoked = args[0] if args else ()
        if any(tp.topic == sketches_name for tp in revoked):
            monitor.forget()  # the next owner (maybe this worker again) resumes from the state topic
            resumed.clear()
            stored.clear()

    @app.agent(sketches)
    async def drift(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            sketch = parse_sketch(event.value, monitor, int(time.time() * 1000))
            if isinstance(sketch, Skip):
                skips.skip(sketches_name, msg.partition, msg.offset, event.key, sketch)
                continue
            await take_over(sketch.model)
            if monitor.add(sketch, (msg.partition, msg.offset)):
                await save(sketch.model)

    @app.timer(interval=0.5)
    async def close_windows() -> None:
        now = int(time.time() * 1000)
        closed = monitor.close_due(now)
        for window in closed:
            sketch, decisions, retrain, _ = window
            metrics.observe_window(window)
            recent.add_window(window)
            raised = [alert_record(sketch, d, now) for d in decisions]
            for alert in raised:
                log.info("alert %s %s: %s", alert.severity, alert.kind, alert.message)
                recent.add_alert(alert)
                await alerts.send(key=sketch.model.encode(), value=encode_event(alert_schema, alert))
            if retrain is not None:
                request = retrain_record(sketch, retrain, [a.id for a in raised], lookback_ms, now)
                log.info("retrain requested for %s: %s", sketch.model, request.reason)
                await retrains.send(key=sketch.model.encode(), value=encode_event(retrain_schema, request))
        for model in sorted({window.sketch.model for window in closed}):
            await save(model)
