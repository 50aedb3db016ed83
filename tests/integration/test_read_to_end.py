"""Reading a topic to its end while producers keep writing to it (what `driftline explain` and `report` do)."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Producer

from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics, iter_topic

pytestmark = pytest.mark.kafka


def test_a_topic_being_written_to_is_read_to_an_end(broker: Broker, namespace: str) -> None:
    """The embedded broker sends no end-of-partition while a partition is appended to: a reader must stop at
    the end it saw, not wait for one that never comes (it timed out during any traffic)."""
    topic = f"{namespace}.busy"
    conf = {"bootstrap.servers": broker.bootstrap}
    create_topics(conf, {topic: 2})
    producer = Producer({**conf, "linger.ms": 5})
    for i in range(2_000):
        producer.produce(topic, b"before", str(i).encode())
    assert producer.flush(30) == 0
    stop, writing = threading.Event(), threading.Event()

    def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            producer.produce(topic, b"during", str(i).encode())
            producer.poll(0.003)  # a steady trickle, like live traffic
            i += 1
            if i == 100:
                producer.flush(10)
                writing.set()  # appends are acknowledged and more are coming
        producer.flush(30)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        assert writing.wait(30), "the writer did not get going"
        values = [m.value() for m in iter_topic(conf, topic, timeout_s=20)]
    finally:
        stop.set()
        writer.join()
    assert values.count(b"before") == 2_000  # everything written before the read began
