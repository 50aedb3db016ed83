"""The worker's Kafka ends: a batch source and an acknowledged sink, on confluent-kafka.

Faust's per-event machinery (~155 µs an event, measured on the 2-core
development machine) and its aiokafka producer (~120 µs a send) cost more
than all of the scoring, against ~1.2 µs to consume and ~1.5 µs to produce
a record with librdkafka in batches; so the score path reads and writes
through librdkafka, and Faust only runs the worker's tasks around it.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from driftline.streams.core.pipeline import Headers, OutRecord, RawMessage
from driftline.streams.errors import DeliveryError
from driftline.streams.settings import KAFKA_LOG, RepeatFilter

log = logging.getLogger(__name__)
# A broker that is away makes every poll report the same error: one warning a minute says so (with the count).
log.addFilter(RepeatFilter(min_level=logging.WARNING))


Partition = tuple[str, int]


class BatchSource:
    """A consumer-group member that hands out batches and stores offsets only when told.

    Rebalances are handled here, explicitly: before a partition is revoked,
    the member waits (up to ``drain_timeout_s``) until ``busy()`` says no
    batch is being scored or waiting for acknowledgements, so what it did is
    stored and committed before the partition moves; records of a partition
    revoked during a poll are dropped from the batch (the new owner reads them
    from the committed offset). Progress bookkeeping (lag) starts afresh for
    every partition assigned.
    """

    def __init__(self, conf: Mapping[str, Any], topics: Sequence[str], *,
                 busy: Callable[[], bool] | None = None, drain_timeout_s: float = 10.0,
                 transactional: bool = False) -> None:
        self.transactional = transactional  # offsets commit in the producer's transactions, not from here
        if transactional:
            conf = {**conf, "enable.auto.commit": False, "isolation.level": "read_committed"}
        self._consumer = Consumer({**conf, "error_cb": self._on_error}, logger=KAFKA_LOG)
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        self._busy = busy
        self._drain_timeout_s = drain_timeout_s
        self._lock = threading.Lock()  # bookkeeping is written on the consumer thread, read on the loop's
        self.high_watermarks: dict[Partition, int] = {}
        self.processed: dict[Partition, int] = {}  # next offset after the last stored one
        self.assigned: set[Partition] = set()
        self.revoked_during_poll = False
        self.broker_down: str | None = None  # the last "all brokers down" error, until a record arrives
        self.fatal_error: str | None = None  # librdkafka says the client is unusable

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal_error = f"consumer fatal error: {err}"
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_down = str(err)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            for key in added:  # counted afresh from the committed offset, whoever held it before
                self.processed.pop(key, None)
                self.high_watermarks.pop(key, None)
            self.assigned |= added
        names = ", ".join(f"{t}[{p}]" for t, p in sorted(added)) or "none"
        log.info("assigned %d partitions (+%s)", len(self.assigned), names)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Let in-flight batches finish and store their offsets before the partitions move (bounded wait)."""
        self._release(partitions, drained=self._drain())

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions lost (session timed out): nothing can be committed for them any more."""
        self._release(partitions, drained=False)

    def _release(self, partitions: list[TopicPartition], *, drained: bool) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            self.assigned -= gone
            for key in gone:
                self.processed.pop(key, None)
                self.high_watermarks.pop(key, None)
            self.revoked_during_poll = True
        names = ", ".join(f"{t}[{p}]" for t, p in sorted(gone)) or "none"
        log.info("revoked %s%s", names, "" if drained else
                 f" with batches still unacknowledged after {self._drain_timeout_s:g}s (the next owner redoes them)")

    def _drain(self) -> bool:
        if self._busy is None:
            return True
        deadline = time.monotonic() + self._drain_timeout_s
        while self._busy():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def poll_batch(self, max_messages: int, timeout_s: float, *, linger_s: float = 0.0,
                   fill: int = 1) -> list[RawMessage]:
        """Up to ``max_messages`` records: what is already fetched, else the first to arrive.

        Waits at most ``timeout_s`` for a first record, then takes whatever else
        is queued. A batch of fewer than ``fill`` records waits up to
        ``linger_s`` more for others (a consumer's linger): every batch costs
        ~0.3 ms of fixed work whatever its size, and at a few thousand
        requests/s batches of a handful of records cost a third of a core in
        that alone, which slowed everything else on the machine more than
        the linger adds. A backlog never waits: it fills the batch at once.
        """
        consume = self._consumer.consume
        self.revoked_during_poll = False
        raw = consume(max_messages, timeout=0)
        if not raw:
            raw = consume(1, timeout=timeout_s)
            if raw and max_messages > 1:
                raw += consume(max_messages - 1, timeout=0)
        if raw and len(raw) < min(fill, max_messages) and linger_s > 0:
            raw += consume(min(fill, max_messages) - len(raw), timeout=linger_s)
            if len(raw) < max_messages:
                raw += consume(max_messages - len(raw), timeout=0)
        if any(map(_error_of, raw)):  # rare: events (EOF, a broker down) among the records
            raw = self._without_errors(raw)
        out = raw_messages(raw)
        # each partition's first offset (reversed: the first one is assigned last)
        first = dict(zip(map(_partition_key, reversed(out)), map(_offset_of, reversed(out)), strict=True))
        seen = set(first)
        with self._lock:
            for key, offset in first.items():
                self.processed.setdefault(key, offset)
        if self.revoked_during_poll:  # fetched before a revocation in this poll: the new owner reads them
            with self._lock:
                mine = set(self.assigned)
            dropped = [m for m in out if (m.topic, m.partition) not in mine]
            if dropped:
                log.info("dropped %d records of partitions revoked during the poll", len(dropped))
                out = [m for m in out if (m.topic, m.partition) in mine]
        if out:
            self.broker_down = None
        for topic, part in seen:
            self._note_watermark(topic, part)
        return out

    def _without_errors(self, raw: list[Any]) -> list[Any]:
        """The records of a poll, the errors among them noted and logged (end of partition is no error)."""
        records = []
        for m in raw:
            err = m.error()
            if err is None:
                records.append(m)
                continue
            if err.code() == KafkaError._ALL_BROKERS_DOWN:
                self.broker_down = str(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
        return records

    def _note_watermark(self, topic: str, partition: int) -> None:
        """The high watermark returned with the last fetch (no request; the broker's "latest offset" is not used)."""
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except (KafkaException, RuntimeError):
            return
        if high >= 0:
            with self._lock:
                if (topic, partition) in self.assigned:
                    self.high_watermarks[(topic, partition)] = high

    def refresh_watermarks(self) -> None:
        """Refresh the cached high watermarks of every assigned partition (fetches keep them current).

        Blocking (a committed-offsets request for newly assigned partitions): call it off the event loop.
        """
        try:
            assigned = self._consumer.assignment()
        except (KafkaException, RuntimeError):
            return
        for tp in assigned:
            self._note_watermark(tp.topic, tp.partition)
        fresh = [tp for tp in assigned if (tp.topic, tp.partition) not in self.processed]
        if fresh:  # assigned but nothing consumed yet: lag counts from the committed offset
            try:
                for tp in self._consumer.committed(fresh, timeout=2):
                    offset = tp.offset
                    if offset < 0:
                        offset, _ = self._consumer.get_watermark_offsets(tp, cached=True)
                    if offset >= 0:
                        with self._lock:
                            if (tp.topic, tp.partition) in self.assigned:
                                self.processed.setdefault((tp.topic, tp.partition), offset)
            except (KafkaException, RuntimeError):
                pass

    def lag(self) -> dict[Partition, int]:
        """Records behind, per assigned partition: fetched high watermark minus the next offset to finish."""
        with self._lock:
            return {k: max(0, high - self.processed[k]) for k, high in self.high_watermarks.items()
                    if k in self.processed}

    def reachable(self, timeout_s: float = 2.0) -> str | None:
        """None when the broker answers a metadata request, else why not."""
        try:
            self._consumer.list_topics(timeout=timeout_s)
        except (KafkaException, RuntimeError) as exc:
            return f"broker unreachable: {exc}"
        return self.broker_down

    def transaction_offsets(self, batches: Iterable[Iterable[RawMessage]]) -> tuple[list[TopicPartition], Any]:
        """The next offsets after ``batches`` on partitions still assigned, and the group metadata that fences them.

        For a transaction's ``send_offsets_to_transaction``: the broker refuses
        them if this member's generation is stale (KIP-447), so a member that
        lost its partitions cannot commit outputs for them.
        """
        last = _last_offsets(m for batch in batches for m in batch)
        with self._lock:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items() if (t, p) in self.assigned]
        return offsets, self._consumer.consumer_group_metadata()

    def store_through(self, messages: Iterable[RawMessage]) -> None:
        """Mark every message of a finished batch as done (committed by the next auto-commit).

        In transactional mode the offsets were committed with the batch's
        transaction already: only the lag bookkeeping moves on.
        """
        last = _last_offsets(messages)
        if not last:
            return
        with self._lock:
            gone = [k for k in last if k not in self.assigned]
            for k in gone:  # moved to another member, which redoes them from the committed offset
                del last[k]
            for (t, p), o in last.items():
                self.processed[(t, p)] = max(o + 1, self.processed.get((t, p), 0))
        if gone:
            log.info("offsets of revoked partitions not stored: %s", ", ".join(f"{t}[{p}]" for t, p in gone))
        if not last or self.transactional:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
        except (KafkaException, RuntimeError) as exc:
            # The consumer closed at shutdown, or the partition moved to another member during the batch: it will redo
            # these records (at least once), so there is nothing to store here.
            log.info("offsets not stored after a rebalance: %s", exc)

    def close(self) -> None:
        try:
            self._consumer.close()
        except RuntimeError:
            pass  # already closed


def _last_offsets(messages: Iterable[RawMessage]) -> dict[Partition, int]:
    """The highest offset per partition among ``messages``."""
    last: dict[Partition, int] = {}
    for m in messages:
        key = (m.topic, m.partition)
        if m.offset >= last.get(key, -1):
            last[key] = m.offset
    return last


_headers_of = operator.methodcaller("headers")


def read_headers(m: Any) -> tuple[Headers | None, str | None]:
    """A consumed record's headers, or (None, why) when librdkafka's Python client cannot read them.

    confluent-kafka decodes header names as UTF-8 and, on other bytes,
    returns a value with an exception still set instead of raising. Called
    directly from warm (specialised) bytecode, that exception surfaces later,
    at an unrelated call; called through ``operator.methodcaller`` (CPython's
    checked call path) it is raised here, where it is caught.
    """
    try:
        return cast(Headers | None, _headers_of(m)), None
    except Exception as exc:  # noqa: BLE001 - any header decoding failure is the record's, not the process's
        return None, f"headers unreadable ({type(exc).__name__}): a header name is not UTF-8"


def raw_message(m: Any) -> RawMessage:
    """A consumed record as the pipeline sees it; headers librdkafka cannot read are marked, not raised.

    Such a record keeps its key and value and carries ``header_error``, so
    the pipeline dead-letters it instead of the whole worker stopping on it.
    """
    headers, header_error = read_headers(m)
    ts_type, ts = m.timestamp()
    return RawMessage(m.topic(), m.partition(), m.offset(), m.key(), m.value(), headers, ts if ts_type else 0,
                      header_error)


_error_of = operator.methodcaller("error")
_partition_key = operator.attrgetter("topic", "partition")  # of a RawMessage
_offset_of = operator.attrgetter("offset")
_new_raw = partial(tuple.__new__, RawMessage)


def raw_messages(batch: list[Any]) -> list[RawMessage]:
    """The consumed records of a poll (no error among them) as the pipeline sees them, field by field.

    Each field is read for the whole batch by ``map`` over confluent-kafka's
    accessors and the records are built by ``tuple.__new__``: no Python
    frame per record but the headers'. Those are read one by one through
    :func:`read_headers`, the one call path that raises on a header name
    that is not UTF-8 (through ``map`` the record was scored with its
    headers silently lost, and the error was left pending).
    """
    read = [read_headers(m) for m in batch]
    stamps = [ts if kind else 0 for kind, ts in map(Message.timestamp, batch)]
    return list(map(_new_raw, zip(map(Message.topic, batch), map(Message.partition, batch),
                                  map(Message.offset, batch), map(Message.key, batch), map(Message.value, batch),
                                  [h for h, _ in read], stamps, [e for _, e in read], strict=True)))


class Sink(Protocol):
    """Where the score path sends a batch's outputs; :meth:`poll` returns the batches whose offsets may move on."""

    fatal_error: str | None

    @property
    def in_flight(self) -> int: ...

    def send(self, records: Sequence[OutRecord], token: Any) -> None: ...

    def poll(self, timeout_s: float = 0.0) -> list[Any]: ...

    def flush(self, timeout_s: float = 30.0) -> list[Any]: ...


class _Pending:
    """Outputs of one batch still waiting for acknowledgements; ``wake`` runs once the last one is in (or fails)."""

    __slots__ = ("error", "left", "token", "wake")

    def __init__(self, left: int, token: Any, wake: Callable[[], None] | None = None) -> None:
        self.left = left
        self.token = token
        self.error: str | None = None
        self.wake = wake

    def delivered(self, err: KafkaError | None, _msg: Any) -> None:
        self.left -= 1
        if err is not None and self.error is None:
            self.error = str(err)
            if self.wake is not None:
                self.wake()
        elif self.left == 0 and self.wake is not None:
            self.wake()


def _produce_all(producer: Producer, records: Sequence[OutRecord], pending: _Pending, *,
                 served_elsewhere: bool = False) -> None:
    """Queue ``records``, waiting while librdkafka's queue is full; a record refused outright fails the batch.

    ``served_elsewhere``: another thread serves the delivery reports, so a
    full queue is waited out, not polled here (two threads running delivery
    callbacks at once could lose a count).
    """
    produce, callback = producer.produce, pending.delivered
    for i, r in enumerate(records):
        while True:
            try:
                produce(r.topic, r.value, r.key, headers=r.headers,  # type: ignore[arg-type]
                        on_delivery=callback)
                break
            except BufferError:
                if served_elsewhere:
                    time.sleep(0.005)
                else:
                    producer.poll(0.05)
            except (KafkaException, TypeError, ValueError) as exc:
                pending.left -= len(records) - i  # these will never be acknowledged
                pending.error = f"cannot produce to {r.topic}: {exc}"
                raise DeliveryError(f"{pending.error}; the batch's offsets stay uncommitted") from exc


class AckedSink:
    """Produces the outputs of batches and hands back, in order, the batches fully acknowledged.

    Batches are pipelined: the next batch is scored while the broker
    acknowledges the previous one. A batch counts as done only when every one
    of its records is acknowledged and every earlier batch is done too, so
    storing offsets in the order returned never skips an unacknowledged
    record. Delivery callbacks run inside :meth:`poll`/:meth:`flush`, on the
    caller's thread, or, after :meth:`wake_on_delivery`, on a thread of
    their own that calls back the moment a batch is fully acknowledged, so
    the caller waits on that instead of polling on a timer.
    """

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._producer = Producer({**conf, "error_cb": self._on_error}, logger=KAFKA_LOG)
        self._inflight: deque[_Pending] = deque()
        self.fatal_error: str | None = None  # set the moment librdkafka says the producer is unusable
        self._wake: Callable[[], None] | None = None
        self._serving: threading.Thread | None = None
        self._stop_serving = threading.Event()

    def wake_on_delivery(self, wake: Callable[[], None]) -> None:
        """Serve delivery reports on a thread of their own; ``wake()`` (thread-safe) runs when a batch is done.

        ``wake`` runs on that thread: hand it something like
        ``loop.call_soon_threadsafe(event.set)``. A fatal producer error wakes it too.
        """
        self._wake = wake
        self._serving = threading.Thread(target=self._serve, name="driftline-deliveries", daemon=True)
        self._serving.start()

    def _serve(self) -> None:
        poll, stop = self._producer.poll, self._stop_serving
        while not stop.is_set():
            poll(0.1)  # releases the GIL while it waits; the callbacks run here

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal_error = f"producer fatal error: {err}"
            if self._wake is not None:
                self._wake()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def send(self, records: Sequence[OutRecord], token: Any) -> None:
        """Queue one batch's records; ``token`` comes back from :meth:`poll` once all are acknowledged.

        A record the producer refuses outright (too large, unknown topic, a
        fatal producer) raises :class:`DeliveryError`: the batch is marked
        failed, never left half-counted, so nothing after it is stored either.
        """
        pending = _Pending(len(records), token, self._wake)
        self._inflight.append(pending)
        _produce_all(self._producer, records, pending, served_elsewhere=self._serving is not None)
        if not records and self._wake is not None:
            self._wake()  # nothing to wait for: done now

    def poll(self, timeout_s: float = 0.0) -> list[Any]:
        """Serve delivery reports; return the tokens of batches now fully acknowledged, oldest first.

        With :meth:`wake_on_delivery` the reports are served on their own
        thread: this only collects what they finished, without waiting.
        """
        if self._serving is None:
            self._producer.poll(timeout_s)
        return self._completed()

    def flush(self, timeout_s: float = 30.0) -> list[Any]:
        """Wait for every queued record; raise if some are still unacknowledged."""
        if self._serving is not None:  # one thread serves the reports from here on
            self._stop_serving.set()
            self._serving.join()
            self._serving = None
        left = self._producer.flush(timeout_s)
        done = self._completed()
        if left:
            raise DeliveryError(f"{left} records not acknowledged within {timeout_s:.0f}s; is the broker up?")
        return done

    def _completed(self) -> list[Any]:
        done = []
        while self._inflight and (self._inflight[0].left <= 0 or self._inflight[0].error is not None):
            pending = self._inflight.popleft()
            if pending.error is not None:
                raise DeliveryError(
                    f"outputs of a batch were not delivered ({pending.error}); its offsets stay uncommitted"
                )
            done.append(pending.token)
        return done


class TransactionalSink:
    """Exactly-once: batches' outputs and their input offsets commit together, in one Kafka transaction.

    Same interface as :class:`AckedSink`: :meth:`send` a batch, and
    :meth:`poll` hands back the batches that are done, here once their
    transaction has committed (every ``commit_every_s`` or ``max_batches``
    batches). The offsets come from ``offsets`` (the batch source's
    :meth:`BatchSource.transaction_offsets`) and commit through the producer,
    fenced by the consumer's group generation. Any failure aborts the
    transaction (read_committed readers never see its outputs) and raises
    :class:`DeliveryError`; the worker exits and its restart redoes the
    batches from the committed offsets, so nothing is lost and nothing
    appears twice.
    """

    def __init__(self, conf: Mapping[str, Any],
                 offsets: Callable[[list[Any]], tuple[list[TopicPartition], Any]], *,
                 commit_every_s: float = 0.1, max_batches: int = 8, timeout_s: float = 30.0) -> None:
        self._producer = Producer({**conf, "error_cb": self._on_error}, logger=KAFKA_LOG)
        self._offsets = offsets
        self._every = commit_every_s
        self._max = max_batches
        self._timeout = timeout_s
        self._open: list[_Pending] = []
        self._began = 0.0
        self.fatal_error: str | None = None
        try:  # fences an earlier process with this transactional id and aborts what it left open
            self._producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise DeliveryError(f"cannot start transactions ({exc.args[0]}); is the broker Apache Kafka with "
                                "transactions enabled?") from exc

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal_error = f"producer fatal error: {err}"

    @property
    def in_flight(self) -> int:
        """Batches in the open transaction, not yet committed."""
        return len(self._open)

    def send(self, records: Sequence[OutRecord], token: Any) -> None:
        if not self._open:
            self._producer.begin_transaction()
            self._began = time.monotonic()
        pending = _Pending(len(records), token)
        self._open.append(pending)
        _produce_all(self._producer, records, pending)

    def poll(self, timeout_s: float = 0.0) -> list[Any]:
        """Serve delivery reports; commit the open transaction when it is old or large enough."""
        self._producer.poll(timeout_s)
        if self._open and (len(self._open) >= self._max or time.monotonic() - self._began >= self._every):
            return self.commit()
        return []

    def flush(self, timeout_s: float = 30.0) -> list[Any]:
        """Commit what is open (at shutdown or before partitions move)."""
        return self.commit(timeout_s)

    def commit(self, timeout_s: float | None = None) -> list[Any]:
        """Commit the open transaction with its batches' offsets; their tokens, oldest first."""
        if not self._open:
            return []
        timeout = self._timeout if timeout_s is None else timeout_s
        batches, self._open = self._open, []
        try:
            failed = next((p.error for p in batches if p.error is not None), None)
            if failed is not None:
                raise DeliveryError(failed)
            offsets, group = self._offsets([p.token for p in batches])
            if offsets:
                self._producer.send_offsets_to_transaction(offsets, group, timeout)
            self._producer.commit_transaction(timeout)
        except (KafkaException, DeliveryError) as exc:
            self._abort()
            why = exc.args[0] if exc.args else exc
            raise DeliveryError(f"a transaction of {len(batches)} batches did not commit ({why}); it is aborted "
                                "and its input offsets stay uncommitted") from exc
        return [p.token for p in batches]

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(10)
        except KafkaException as exc:  # fenced or fatal: the broker aborts it when the transaction times out
            log.warning("could not abort the transaction: %s", exc)
