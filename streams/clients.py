"""The worker's Kafka ends: a batch source and an acknowledged sink, on confluent-kafka.

Faust's per-event machinery and aiokafka producer cost more than all of the
scoring (see DESIGN.md), so the score path reads and writes through
librdkafka in batches; Faust only carries one event per batch.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streams.errors import DeliveryError
from streams.pipeline import Headers, OutRecord, RawMessage

log = logging.getLogger(__name__)


class BatchSource:
    """A consumer-group member that hands out batches and stores offsets only when told."""

    def __init__(self, conf: Mapping[str, Any], topics: Sequence[str]) -> None:
        self._consumer = Consumer(dict(conf), logger=log)
        self._consumer.subscribe(list(topics), on_assign=_log_assignment, on_revoke=_log_revocation)
        self.high_watermarks: dict[tuple[str, int], int] = {}
        self.processed: dict[tuple[str, int], int] = {}  # next offset after the last stored one
        self.broker_down: str | None = None  # the last "all brokers down" error, until a record arrives

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """Up to ``max_messages`` records: what is already fetched, else the first to arrive.

        Waits at most ``timeout_s`` for a first record, then takes whatever else
        is queued without waiting, so a batch is as large as the backlog and no
        record waits for a batch to fill.
        """
        consume = self._consumer.consume
        raw = consume(max_messages, timeout=0)
        if not raw:
            raw = consume(1, timeout=timeout_s)
            if raw and max_messages > 1:
                raw += consume(max_messages - 1, timeout=0)
        out: list[RawMessage] = []
        seen: set[tuple[str, int]] = set()
        for m in raw:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._ALL_BROKERS_DOWN:
                    self.broker_down = str(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            key = (cast(str, m.topic()), cast(int, m.partition()))
            if key not in seen:
                seen.add(key)
                self.processed.setdefault(key, cast(int, m.offset()))
            ts_type, ts = m.timestamp()
            out.append(RawMessage(
                cast(str, m.topic()), cast(int, m.partition()), cast(int, m.offset()), m.key(), m.value(),
                cast(Headers | None, m.headers()), ts if ts_type else 0,
            ))
        if out:
            self.broker_down = None
        for topic, part in seen:
            self._note_watermark(topic, part)
        return out

    def _note_watermark(self, topic: str, partition: int) -> None:
        """The high watermark returned with the last fetch (no request; the broker's "latest offset" is not used)."""
        try:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except (KafkaException, RuntimeError):
            return
        if high >= 0:
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
                    if tp.offset >= 0:
                        self.processed.setdefault((tp.topic, tp.partition), tp.offset)
                    else:
                        low, _ = self._consumer.get_watermark_offsets(tp, cached=True)
                        if low >= 0:
                            self.processed.setdefault((tp.topic, tp.partition), low)
            except (KafkaException, RuntimeError):
                pass
        mine = {(tp.topic, tp.partition) for tp in assigned}
        for key in [k for k in self.high_watermarks if k not in mine]:  # moved to another member
            del self.high_watermarks[key]

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind, per assigned partition: fetched high watermark minus the next offset to finish."""
        return {k: max(0, high - self.processed[k]) for k, high in self.high_watermarks.items()
                if k in self.processed}

    def reachable(self, timeout_s: float = 2.0) -> str | None:
        """None when the broker answers a metadata request, else why not."""
        try:
            self._consumer.list_topics(timeout=timeout_s)
        except (KafkaException, RuntimeError) as exc:
            return f"broker unreachable: {exc}"
        return self.broker_down

    def store_through(self, messages: Iterable[RawMessage]) -> None:
        """Mark every message of a finished batch as done (committed by the next auto-commit)."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic, m.partition)
            if m.offset >= last.get(key, -1):
                last[key] = m.offset
        if not last:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        for (t, p), o in last.items():
            self.processed[(t, p)] = max(o + 1, self.processed.get((t, p), 0))
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


def _log_assignment(consumer: Any, partitions: list[TopicPartition]) -> None:
    """Cooperative rebalancing hands out increments: log what came and what this member holds now."""
    held = {(tp.topic, tp.partition) for tp in consumer.assignment()} | {(tp.topic, tp.partition) for tp in partitions}
    added = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
    log.info("assigned %d partitions (+%s)", len(held), added or "none")


def _log_revocation(consumer: Any, partitions: list[TopicPartition]) -> None:
    log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "none")


class _Pending:
    """Outputs of one batch still waiting for acknowledgements."""

    __slots__ = ("error", "left", "token")

    def __init__(self, left: int, token: Any) -> None:
        self.left = left
        self.token = token
        self.error: str | None = None

    def delivered(self, err: KafkaError | None, _msg: Any) -> None:
        self.left -= 1
        if err is not None and self.error is None:
            self.error = str(err)


class AckedSink:
    """Produces the outputs of batches and hands back, in order, the batches fully acknowledged.

    Batches are pipelined: the next batch is scored while the broker
    acknowledges the previous one. A batch counts as done only when every one
    of its records is acknowledged and every earlier batch is done too, so
    storing offsets in the order returned never skips an unacknowledged
    record. Delivery callbacks run inside :meth:`poll`/:meth:`flush`, on the
    caller's thread.
    """

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._producer = Producer(dict(conf), logger=log)
        self._inflight: deque[_Pending] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def send(self, records: Sequence[OutRecord], token: Any) -> None:
        """Queue one batch's records; ``token`` comes back from :meth:`poll` once all are acknowledged."""
        pending = _Pending(len(records), token)
        self._inflight.append(pending)
        produce, callback = self._producer.produce, pending.delivered
        for r in records:
            while True:
                try:
                    produce(r.topic, r.value, r.key, headers=r.headers,  # type: ignore[arg-type]
                            on_delivery=callback)
                    break
                except BufferError:
                    self._producer.poll(0.05)

    def poll(self, timeout_s: float = 0.0) -> list[Any]:
        """Serve delivery reports; return the tokens of batches now fully acknowledged, oldest first."""
        self._producer.poll(timeout_s)
        return self._completed()

    def flush(self, timeout_s: float = 30.0) -> list[Any]:
        """Wait for every queued record; raise if some are still unacknowledged."""
        left = self._producer.flush(timeout_s)
        done = self._completed()
        if left:
            raise DeliveryError(f"{left} records not acknowledged within {timeout_s:.0f}s; is the broker up?")
        return done

    def _completed(self) -> list[Any]:
        done = []
        while self._inflight and self._inflight[0].left <= 0:
            pending = self._inflight.popleft()
            if pending.error is not None:
                raise DeliveryError(
                    f"outputs of a batch were not delivered ({pending.error}); its offsets stay uncommitted"
                )
            done.append(pending.token)
        return done
