"""The worker's Kafka ends: a batch source and an acknowledged sink, on confluent-kafka.

Faust's per-event machinery and aiokafka producer cost more than all of the
scoring (see DESIGN.md), so the score path reads and writes through
librdkafka in batches; Faust only carries one event per batch.
"""

from __future__ import annotations

import logging
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
        self._consumer.subscribe(list(topics))
        self.high_watermarks: dict[tuple[str, int], int] = {}

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        """Up to ``max_messages`` records, waiting at most ``timeout_s`` for the first ones."""
        out: list[RawMessage] = []
        for m in self._consumer.consume(max_messages, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
                continue
            ts_type, ts = m.timestamp()
            out.append(RawMessage(
                cast(str, m.topic()), cast(int, m.partition()), cast(int, m.offset()), m.key(), m.value(),
                cast(Headers | None, m.headers()), ts if ts_type else 0,
            ))
        return out

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
        try:
            self._consumer.store_offsets(offsets=offsets)
        except (KafkaException, RuntimeError) as exc:
            # The consumer closed at shutdown, or the partition moved to another member during the batch: it will redo
            # these records (at least once), so there is nothing to store here.
            log.info("offsets not stored after a rebalance: %s", exc)

    def lag(self) -> dict[tuple[str, int], int]:
        """Per-partition lag from the high watermark returned with fetched data."""
        out = {}
        for tp in self._consumer.assignment():
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                pos = self._consumer.position([tp])[0].offset
            except KafkaException:
                continue
            if high >= 0 and pos >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - pos)
        return out

    def close(self) -> None:
        try:
            self._consumer.close()
        except RuntimeError:
            pass  # already closed


class AckedSink:
    """Produces records and waits until the broker acknowledged every one."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._producer = Producer(dict(conf), logger=log)
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def produce(self, records: Iterable[OutRecord]) -> int:
        """Queue records; returns how many. Call :meth:`flush` before storing offsets."""
        produce = self._producer.produce
        n = 0
        for r in records:
            while True:
                try:
                    produce(r.topic, r.value, r.key, headers=r.headers,  # type: ignore[arg-type]
                            on_delivery=self._on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            n += 1
        self._producer.poll(0)
        return n

    def flush(self, timeout_s: float = 60.0) -> None:
        """Block until all queued records are acknowledged; raise if any failed."""
        left = self._producer.flush(timeout_s)
        if left:
            raise DeliveryError(f"{left} records not acknowledged within {timeout_s:.0f}s; broker down?")
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError(f"{len(errors)} records were not delivered: {errors[0]}")
