"""The feedback agent: late labels joined to predictions, live quality, performance drops and concept drift.

With ``feedback`` on, the score path also emits every prediction with its
input row to ``{ns}.scored``; labels arrive on ``{ns}.feedback``. Both are
keyed by request id and have the same partition count (and driftline's
producers use the Java client's partitioner), so the consumer group
``{ns}-feedback`` with the range assignor hands a member the same partition
numbers of both and the join is local. Joined pairs go to ``{ns}.labeled``
(what the trainer reads); labels with no prediction after the TTL go to the
dead letters with reason ``no_prediction``, labels evicted from a full join
with reason ``join_overflow``.

At least once: a batch's offsets are stored only once everything it
produced is acknowledged (:class:`FeedbackLoop`), including the state
records that keep the waiting labels and predictions on
``{ns}.feedback-state`` (partition p holds the join state of the inputs'
partition p). A member reads partition p of it back when p is assigned, so a
restart or a rebalance loses no waiting label.

Quality is judged per model in one place, not here: each batch's joined
events (score and outcome) and its new predictions' scores go, per model,
as a label batch onto ``{ns}.sketches`` (keyed by model, like the drift
sketches), where the drift agent that owns the model folds them into its
quality windows, concept detectors and label-free estimate
(:mod:`driftline.streams.core.quality`) and keeps that state on
``{ns}.drift-state``. The label batches go out with the batch's other
outputs, so its offsets are stored only once they are acknowledged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import faust

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode
from driftline.schemas.errors import SchemaUnavailable
from driftline.streams.core.deadletters import ERROR_HEADER, bound_record
from driftline.streams.core.join import (
    KINDS,
    STATE_LABEL,
    FeedbackJoin,
    Joined,
    Label,
    Pending,
    Scored,
    StateRecord,
    Waiting,
    decode_state,
    encode_state,
)
from driftline.streams.core.pipeline import OutRecord, RawMessage, ServedModel
from driftline.streams.core.quality import MAX_SEGMENT_TEXT, LabelBatcher
from driftline.streams.errors import BrokerError, DeliveryError
from driftline.streams.kafka.clients import AckedSink, BatchSource
from driftline.streams.kafka.topics import iter_partitions
from driftline.streams.metrics import Metrics
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)


class FeedbackAgent:
    """The join and quality bookkeeping of one worker, fed with raw records, returning records to produce.

    Synchronous and clock-driven (``now_ms`` passed in): :class:`FeedbackLoop`
    moves bytes between a librdkafka consumer and producer around it, on its
    own thread. Faust's per-event path was measured at under 100 joined
    labels a second here (one awaited send per record), far below the score
    path; batches through librdkafka keep up with it.
    """

    def __init__(self, settings: Settings, catalog: SchemaCatalog, served: dict[str, ServedModel],
                 metrics: Metrics) -> None:
        self.settings, self.catalog, self.served, self.metrics = settings, catalog, served, metrics
        self.scored_topic, self.feedback_topic = settings.topic("scored"), settings.topic("feedback")
        self.state_topic = settings.topic("feedback-state")
        self.join = FeedbackJoin(int(settings.feedback_ttl_s * 1000), settings.feedback_max_pending,
                                 settings.feedback_max_pending_bytes)
        self.scored_schema = catalog.latest("driftline.Scored")
        self.warned_key = False  # a feedback record keyed by something else than its request id was logged
        self.reported_evictions = (0, 0)  # (labels, predictions) evicted, as last logged
        self.labeled_schema = catalog.latest("driftline.Labeled")
        self.reported_duplicates = 0
        self.batcher = LabelBatcher()  # what the quality monitor of each model hears from this batch

    def _count_score(self, sc: Scored) -> None:
        """A new prediction: its score (a regressor's predicted value) goes to the label-free estimate."""
        served = self.served.get(sc.model)
        if served is not None:
            m = served.model.manifest
            self.batcher.score(sc.model, sc.version, sc.variant, m.task, m.threshold, sc.score)

    def label_batches(self) -> list[OutRecord]:
        """This batch's label batches, one per model, for ``{ns}.sketches`` (keyed by model)."""
        topic = self.settings.topic("sketches")
        return [OutRecord(topic, b.model.encode(), b.to_bytes()) for b in self.batcher.take()]

    def process(self, messages: list[RawMessage], now_ms: int) -> list[OutRecord]:
        """Join one batch; the records to produce (labeled events, alerts, retrain requests, dead letters)."""
        out: list[OutRecord] = []
        for msg in messages:
            size = len(msg.key or b"") + len(msg.value or b"")
            if size > self.settings.max_message_bytes:  # its state record could not be written: never let it wait
                if msg.topic == self.feedback_topic:
                    out.append(self._dead(msg.key, msg.value, "too_large", f"{size} bytes, over max_message_bytes="
                                          f"{self.settings.max_message_bytes}", now_ms))
                else:
                    self._skip_scored(msg, f"{size} bytes, over max_message_bytes")
                continue
            try:
                rec = decode(self.catalog, msg.value, fast=True)[1]
                entry = scored_of(rec) if msg.topic == self.scored_topic else label_of(rec, msg.key, msg.value)
            except SchemaUnavailable as exc:  # the record may be fine: say so, keep its bytes
                if msg.topic == self.feedback_topic:
                    out.append(self._dead(msg.key, msg.value, "registry_unavailable", str(exc), now_ms))
                else:
                    self._skip_scored(msg, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - untrusted bytes: fastavro raises IndexError, OverflowError, ...
                if msg.topic == self.feedback_topic:
                    out.append(self._dead(msg.key, msg.value, "malformed_feedback", f"{type(exc).__name__}: {exc}",
                                          now_ms))
                else:
                    self._skip_scored(msg, f"{type(exc).__name__}: {exc}")
                continue
            if isinstance(entry, Scored):
                joined = self.join.add_prediction(entry, now_ms, msg.partition)
                self._count_score(entry)
            elif entry is None:
                out.append(self._dead(msg.key, msg.value, "bad_feedback", "a label or a target is required", now_ms))
                continue
            else:
                self._check_key(msg.key, entry.request_id)
                joined = self.join.add_label(entry, now_ms, msg.partition)
                self.metrics.labels.labels("-", "received").inc()
            for j in joined:
                out.extend(self._use(j, now_ms))
        return out

    def _skip_scored(self, msg: RawMessage, why: str) -> None:
        self.metrics.skipped.labels(self.scored_topic, "malformed").inc()
        log.warning("skipped the record at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, why[:300])

    def _check_key(self, key: bytes | None, rid: str) -> None:
        """Say once that labels keyed otherwise than by request id cannot be co-partitioned with their predictions."""
        if self.warned_key or key == rid.encode():
            return
        self.warned_key = True
        log.warning("a record on %s is keyed %r, not by its request id %r: key feedback records by request id "
                    "and produce them with the murmur2 partitioner, or they land on other partitions than their "
                    "predictions and wait in vain", self.feedback_topic, key, rid)

    def tick(self, now_ms: int) -> list[OutRecord]:
        """Labels whose prediction never came within the TTL, and labels evicted from a full join: dead letters.

        Expiry is incremental (a capped chunk per call, see ``FeedbackJoin.expire``).
        """
        out = []
        for lab in self.join.expire(now_ms):
            out.append(self._dead_label(lab, "no_prediction", f"no prediction for request {lab.request_id} within "
                                        f"feedback_ttl_s={self.settings.feedback_ttl_s:g}", now_ms))
        for lab in self.join.take_overflowed():
            out.append(self._dead_label(lab, "join_overflow", f"the label join was full "
                                        f"(feedback_max_pending={self.settings.feedback_max_pending}, "
                                        f"feedback_max_pending_bytes={self.settings.feedback_max_pending_bytes}): "
                                        f"request {lab.request_id} was evicted, oldest first", now_ms))
        dup = self.join.counts.duplicates
        self.metrics.labels.labels("-", "duplicate").inc(dup - self.reported_duplicates)
        self.reported_duplicates = dup
        self._log_evictions()
        return out

    def _log_evictions(self) -> None:
        c = self.join.counts
        now = (c.overflow, c.evicted_predictions)
        if now == self.reported_evictions:
            return
        labels, predictions = now[0] - self.reported_evictions[0], now[1] - self.reported_evictions[1]
        self.reported_evictions = now
        log.warning("the label join is full (%d entries, %d bytes): evicted %d waiting labels (dead letters, "
                    "reason join_overflow) and %d predictions, oldest first; raise feedback_max_pending / "
                    "feedback_max_pending_bytes or lower feedback_ttl_s", self.join.size, self.join.bytes,
                    labels, predictions)

    def _dead_label(self, lab: Label, reason: str, message: str, now_ms: int) -> OutRecord:
        key, value = lab.raw if lab.raw is not None else (None, None)
        self.metrics.labels.labels("-", reason).inc()
        return self._dead(key, value, reason, message, now_ms)

    def _dead(self, key: bytes | None, value: bytes | None, reason: str, message: str, now_ms: int) -> OutRecord:
        when = datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        errors: list[tuple[str, bytes | None]] = [(ERROR_HEADER + k, v.encode()) for k, v in {
            "topic": self.feedback_topic, "stage": "feedback", "reason": reason, "exception.message": message,
            "timestamp": when}.items()]
        self.metrics.dead_letters.labels("-", "feedback", reason).inc()
        key, value, headers = bound_record(key, value, None, errors, self.settings.deadletter_max_bytes)
        return OutRecord(self.settings.topic("deadletter"), key, value, headers)

    # -- the join's state on {ns}.feedback-state ---------------------------------------------------------------

    def state_changes(self) -> tuple[list[OutRecord], list[tuple[int, str]]]:
        """State records of the requests now waiting, and the (partition, request id) that stopped waiting.

        The first go out with the batch (its offsets wait for them); the
        tombstones of the others only once the batch's joined records and
        dead letters are acknowledged (:meth:`tombstones`), so a crash in
        between leaves the entry restorable instead of lost.
        """
        upserts: list[OutRecord] = []
        removed: list[tuple[int, str]] = []
        for p, rid in self.join.take_changed():
            e = self.join.waiting_entry(p, rid)
            if e is None:
                removed.append((p, rid))
            else:
                key, value = encode_state(self._state_record(rid, e))
                upserts.append(OutRecord(self.state_topic, key, value))
        return upserts, removed

    def tombstones(self, removed: Iterable[tuple[int, str]]) -> list[OutRecord]:
        """Tombstones of requests still gone from partitions this member still holds."""
        return [OutRecord(self.state_topic, rid.encode(), None) for p, rid in removed
                if self.join.owns(p) and self.join.waiting_entry(p, rid) is None]

    def _state_record(self, rid: str, e: Pending | Waiting) -> StateRecord:
        if isinstance(e, Waiting):
            return StateRecord(STATE_LABEL, rid, e.at, e.label.raw or (None, None))
        return StateRecord("predictions", rid, e.at, tuple(self._scored_bytes(s) for s in e.scored))

    def _scored_bytes(self, s: Scored) -> bytes:
        return encode(self.scored_schema, {
            "request_id": s.request_id, "model": s.model, "model_version": s.version, "variant": s.variant,
            "score": s.score, "predicted": s.predicted, "event_time": s.event_time, "features": s.features,
            "sealed": s.sealed, "segments": s.segments,
        }, fast=True)

    def restore(self, latest: dict[int, dict[bytes, bytes]], now_ms: int | None = None) -> None:
        """Load the waiting entries of newly assigned partitions: the last state record per request, oldest first.

        Entries older than the TTL expire at the next tick as usual (a label: ``no_prediction``); an entry
        dated after ``now_ms`` is dated ``now_ms`` (a record from the future would stop the partition's clock).
        """
        for p, records in latest.items():
            self.join.assign(p)
            states = []
            for key, value in records.items():
                try:
                    st = decode_state(key, value)
                except Exception as exc:  # noqa: BLE001 - untrusted bytes on the state topic
                    self._skip_state(p, key, exc)
                    continue
                states.append(st if now_ms is None or st.at <= now_ms else replace(st, at=now_ms))
            states.sort(key=lambda st: st.at)
            before = (self.join.counts.restored_labels, self.join.counts.restored_predictions)
            for st in states:
                try:
                    self._restore_one(p, st)
                except Exception as exc:  # noqa: BLE001 - untrusted bytes inside a state record
                    self._skip_state(p, st.request_id.encode(), exc)
            log.info("restored %s[%d]: %d waiting labels, %d waiting predictions", self.state_topic, p,
                     self.join.counts.restored_labels - before[0], self.join.counts.restored_predictions - before[1])

    def _restore_one(self, p: int, st: StateRecord) -> None:
        if st.kind == STATE_LABEL:
            key, value = st.items
            label = label_of(decode(self.catalog, value, fast=True)[1], key, value)
            if label is not None:
                self.join.restore_label(p, label, st.at)
            return
        scored = tuple(scored_of(decode(self.catalog, item, fast=True)[1]) for item in st.items)
        self.join.restore_predictions(p, scored, st.at)

    def _skip_state(self, p: int, key: bytes, exc: Exception) -> None:
        self.metrics.skipped.labels(self.state_topic, "malformed").inc()
        log.warning("skipped a state record of %s[%d] (key %r) that does not decode: %s", self.state_topic, p,
                    key[:64], exc)

    def publish_sizes(self) -> None:
        for kind in KINDS:
            self.metrics.feedback_pending.labels(kind).set(self.join.held[kind])
        self.metrics.feedback_pending_bytes.set(self.join.bytes)

    def _use(self, j: Joined, now: int) -> list[OutRecord]:
        s, lab = j.scored, j.label
        rec = {"request_id": s.request_id, "model": s.model, "model_version": s.version, "variant": s.variant,
               "score": s.score, "predicted": s.predicted, "label": lab.label, "target": lab.target,
               "event_time": s.event_time, "label_time": lab.event_time, "features": s.features,
               "sealed": s.sealed}
        out = [OutRecord(self.settings.topic("labeled"), s.request_id.encode(),
                         encode(self.labeled_schema, rec, fast=True))]
        if s.variant != "shadow":
            self.metrics.labels.labels(s.model, "joined").inc()
        served = self.served.get(s.model)
        if served is None:
            return out
        m = served.model.manifest
        if m.task == "regression":
            if lab.target is not None:
                self.batcher.label(s.model, s.version, s.variant, m.task, m.threshold, s.score, lab.target)
        elif lab.label is not None:
            self.batcher.label(s.model, s.version, s.variant, m.task, m.threshold, s.score,
                               float(lab.label == m.labels[1]), segments=s.segments, fields=m.segments)
        return out


def scored_of(rec: dict[str, Any]) -> Scored:
    """A decoded ``driftline.Scored`` record as the join holds it (repeated names shared, not copied)."""
    predicted = rec.get("predicted")
    return Scored(rec["request_id"], sys.intern(rec["model"]), sys.intern(rec["model_version"]),
                  sys.intern(rec["variant"]), float(rec["score"]), None if predicted is None else sys.intern(predicted),
                  int(rec["event_time"]), bytes(rec["features"]), bool(rec.get("sealed", False)),
                  _segments_of(rec.get("segments")))


def _segments_of(value: Any) -> str | None:
    """A scored record's segment values (v3), None before v3; bounded: the join holds them for the TTL."""
    return value if isinstance(value, str) and len(value) <= MAX_SEGMENT_TEXT else None


def label_of(rec: dict[str, Any], key: bytes | None, value: bytes | None) -> Label | None:
    """A decoded ``driftline.Feedback`` record as the join holds it; None when it has neither label nor target."""
    label, target = rec.get("label"), rec.get("target")
    if label is None and target is None:
        return None
    return Label(rec["request_id"], None if label is None else sys.intern(label),
                 None if target is None else float(target), int(rec["event_time"]), (key, value))


BATCH_MAX = 5_000
POLL_S = 0.2
DRAIN_S = 10.0  # how long a revocation waits for this member's outputs to be acknowledged
RESTORE_TIMEOUT_S = 240.0  # reading the assigned partitions of {ns}.feedback-state
FIRST, TOMBSTONES = 1, 2  # the two phases of a batch's outputs


@dataclass(slots=True)
class _Batch:
    """One batch's bookkeeping: its input records, the requests whose tombstones follow its outputs."""

    msgs: list[RawMessage]
    removed: list[tuple[int, str]]
    done: bool = False


@dataclass
class FeedbackLoop:
    """The feedback agent's Kafka ends, all on the feedback thread: consume, join, produce, store offsets.

    Each :meth:`step` polls a batch, joins it, expires a chunk of the join
    and sends the outputs through an :class:`AckedSink`; the offsets of a
    batch are stored when its outputs, then the tombstones of the entries it
    removed, are acknowledged, in batch order. A partition newly assigned is
    restored from ``{ns}.feedback-state`` before its first record is joined;
    a partition revoked is dropped from memory once this member's outputs are
    acknowledged (the consumer waits for :meth:`busy` before letting it go),
    so the next owner reads a complete state.
    """

    agent: FeedbackAgent
    source: BatchSource
    sink: AckedSink
    state_conf: dict[str, Any]
    max_inflight: int = 8
    order: deque[_Batch] = field(default_factory=deque)

    def step(self) -> None:
        """One batch (or an idle poll): never blocks for long; raises DeliveryError when outputs are lost."""
        problem = self.sink.fatal_error or self.source.fatal_error
        if problem is not None:
            raise DeliveryError(f"{problem}; the feedback outputs cannot be acknowledged")
        msgs = self.source.poll_batch(BATCH_MAX, 0.0 if self.agent.join.behind else POLL_S)
        self.follow_assignment()
        now = int(time.time() * 1000)
        out = self.agent.process(msgs, now) if msgs else []
        out += self.agent.tick(now)
        out += self.agent.label_batches()
        upserts, removed = self.agent.state_changes()
        out += upserts
        if msgs or out or removed:
            batch = _Batch(msgs, removed)
            self.order.append(batch)
            self.sink.send(out, (FIRST, batch))
        self.acknowledged(0.0)
        while self.sink.in_flight > self.max_inflight:
            self.acknowledged(0.01)
        self.agent.publish_sizes()

    def follow_assignment(self) -> None:
        """Drop partitions this member lost; restore those it gained (before any of their records is joined).

        After a revocation every partition is dropped and the ones still held
        are read back: with the range assignor a rebalance revokes them all,
        and a partition may have been someone else's meanwhile.
        """
        held = {p for _, p in set(self.source.assigned)}
        join = self.agent.join
        gone = set(join.parts) if self.source.revoked_during_poll else set(join.parts) - held
        for p in sorted(gone):
            join.drop(p)
        new = sorted(held - set(join.parts))
        if new:
            self.agent.restore(self.read_state(new), int(time.time() * 1000))

    def read_state(self, partitions: list[int]) -> dict[int, dict[bytes, bytes]]:
        """The last value of every key of these partitions of the state topic (tombstones remove)."""
        topic = self.agent.state_topic
        latest: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        started = time.monotonic()
        n = 0
        try:
            for msg in iter_partitions(self.state_conf, topic, partitions, timeout_s=RESTORE_TIMEOUT_S):
                n += 1
                key, value, part = msg.key(), msg.value(), latest[msg.partition()]
                if key is None:
                    continue
                if value is None:
                    part.pop(key, None)
                else:
                    part[key] = value
        except BrokerError as exc:
            raise BrokerError(f"cannot restore the label join from {topic} {partitions}: {exc}; check the broker "
                              f"(driftline topics create makes the topic) and restart the worker") from exc
        log.info("read %d records of %s %s in %.1fs", n, topic, partitions, time.monotonic() - started)
        return latest

    def busy(self) -> bool:
        """Serve acknowledgements (storing offsets, sending tombstones); True while outputs are in flight.

        Called by the consumer before it lets partitions go, inside its poll, on this same thread.
        """
        self.acknowledged(0.0)
        return self.sink.in_flight > 0

    def acknowledged(self, timeout_s: float) -> None:
        """Finish the batches the broker acknowledged; store offsets of the finished ones, in order."""
        for phase, batch in self.sink.poll(timeout_s):
            self._finished(phase, batch)
        while self.order and self.order[0].done:
            batch = self.order.popleft()
            if batch.msgs:
                self.source.store_through(batch.msgs)

    def _finished(self, phase: int, batch: _Batch) -> None:
        if phase == FIRST and batch.removed:
            tombstones = self.agent.tombstones(batch.removed)
            batch.removed = []
            if tombstones:
                self.sink.send(tombstones, (TOMBSTONES, batch))
                return
        batch.done = True

    def close(self) -> None:
        """Store what is acknowledged (within 10 s), then leave the group."""
        try:
            deadline = time.monotonic() + 10.0
            while self.sink.in_flight and time.monotonic() < deadline:
                for phase, batch in self.sink.flush(max(0.1, deadline - time.monotonic())):
                    self._finished(phase, batch)
            self.acknowledged(0.0)
        except DeliveryError as exc:
            log.warning("feedback agent stopping with unacknowledged outputs (redone after a restart): %s", exc)
        self.source.close()


def add_feedback_agent(app: faust.App, settings: Settings, catalog: SchemaCatalog,
                       served: dict[str, ServedModel], metrics: Metrics) -> None:
    """A task that runs :class:`FeedbackLoop` steps on the feedback thread; the event loop only awaits them.

    The group ``{ns}-feedback`` uses the range assignor, which hands a member
    the same partition numbers of both topics (equal partition counts): the
    join stays local. A step used to run on the event loop (decode, join,
    produce, and a full scan of the join every second: 1.8 s at 2M entries),
    which delayed Faust's heartbeats into rebalances.
    """
    from driftline.streams.app.context import add_thread_loop

    agent = FeedbackAgent(settings, catalog, served, metrics)
    conf = {**settings.consumer_config(f"{settings.namespace}-feedback"), "partition.assignment.strategy": "range",
            "max.poll.interval.ms": int(RESTORE_TIMEOUT_S * 1000) + 60_000}  # a restore runs between two polls
    holder: list[FeedbackLoop] = []
    source = BatchSource(conf, [agent.scored_topic, agent.feedback_topic], busy=lambda: holder[0].busy(),
                         drain_timeout_s=DRAIN_S)
    runner = FeedbackLoop(agent, source, AckedSink(settings.producer_config()), settings.confluent(),
                          settings.max_inflight_batches)
    holder.append(runner)
    add_thread_loop(app, "feedback", runner.step, runner.close)
