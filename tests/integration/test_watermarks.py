"""Lag needs the end of each partition: the fetched high watermark (what driftline uses) against ListOffsets.

On Apache Kafka both agree. The embedded broker answers ListOffsets(latest)
with the base offset of the last produced batch + 1, so there only the
fetched watermark is right: that is why driftline's lag, `driftline status`
and its readers never trust "latest offset".
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.streams.kafka.broker import Broker

pytestmark = pytest.mark.kafka
BATCHES = (100, 1, 50, 7)  # records produced per batch, each batch flushed alone


def ends(bootstrap: str, topic: str) -> tuple[int, int]:
    """(high watermark from ListOffsets, high watermark returned with the fetched data) after reading to the end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        tp = TopicPartition(topic, 0, 0)
        consumer.assign([tp])
        deadline, seen = time.monotonic() + 30, 0
        while seen < sum(BATCHES):
            assert time.monotonic() < deadline, f"read {seen} of {sum(BATCHES)} records"
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen += 1
        listed = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        fetched = consumer.get_watermark_offsets(tp, cached=True)[1]
        return listed, fetched
    finally:
        consumer.close()


def test_lag_from_list_offsets_equals_the_fetched_watermark_on_kafka_only(broker: Broker, namespace: str) -> None:
    topic = f"{namespace}.marks"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for size in BATCHES:
        for i in range(size):
            producer.produce(topic, str(i).encode())
        assert producer.flush(30) == 0
    listed, fetched = ends(broker.bootstrap, topic)
    assert fetched == sum(BATCHES)  # the fetched watermark is right on both brokers
    if broker.kind == "kafka":
        assert listed == fetched
    else:  # the embedded broker's ListOffsets(latest): the last batch's base offset + 1
        assert listed == sum(BATCHES) - BATCHES[-1] + 1, listed
