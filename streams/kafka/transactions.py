"""Whether the broker really does transactions, checked once at start before exactly-once is promised.

Some Kafka-protocol brokers accept the transactional calls and still show
the records of aborted transactions to ``read_committed`` readers (the
embedded Tansu broker does). So the check is the behaviour itself: abort one
record, commit another, and read back, as a read_committed consumer, exactly
the committed one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.streams.kafka.topics import reader_config

log = logging.getLogger(__name__)


def default_transactional_id(namespace: str, host: str, process_index: str | None) -> str:
    """Stable across restarts of the same worker slot, so a restart fences and aborts what its crash left open."""
    return f"{namespace}-score-{host}-{process_index or 0}"


def transactions_problem(conf: Mapping[str, Any], topic: str, timeout_s: float = 15.0) -> str | None:
    """None when the broker commits and aborts transactions as Kafka does; else what went wrong, in a phrase."""
    admin = AdminClient(dict(conf))
    futures = admin.create_topics([NewTopic(topic, 1, 1, config={"retention.ms": "3600000"})],
                                  operation_timeout=timeout_s)
    try:
        futures[topic].result(timeout_s)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
            return f"cannot create the probe topic {topic}: {exc.args[0]}"
    probe = uuid.uuid4().hex.encode()
    producer = Producer({**conf, "transactional.id": f"driftline-probe-{probe.decode()}",
                         "transaction.timeout.ms": 10_000})
    try:
        producer.init_transactions(timeout_s)
        producer.begin_transaction()
        producer.produce(topic, b"aborted", probe)
        producer.flush(timeout_s)
        producer.abort_transaction(timeout_s)
        producer.begin_transaction()
        producer.produce(topic, b"committed", probe)
        producer.commit_transaction(timeout_s)
    except KafkaException as exc:
        return f"transactions fail: {exc.args[0]}"
    seen = _read_probe(conf, topic, probe, timeout_s)
    if seen == [b"committed"]:
        return None
    if not seen:
        return f"a committed transaction stayed invisible to read_committed readers for {timeout_s:g}s"
    return f"read_committed readers saw {[v.decode() for v in seen]} where only the committed record belongs"


def _read_probe(conf: Mapping[str, Any], topic: str, probe: bytes, timeout_s: float) -> list[bytes]:
    consumer = Consumer(reader_config(conf, f"driftline-probe-{probe.decode()}"))
    seen: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                if seen:
                    break
                continue
            if msg.key() == probe:
                seen.append(msg.value() or b"")
                if msg.value() == b"committed":
                    break
    finally:
        consumer.close()
    return seen
