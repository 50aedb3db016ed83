"""The trainer without a broker: one consumer on the labeled topic that reads on; clock and sleep passed in."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode
from driftline.streams.core.poison import SkipLog
from driftline.streams.settings import load_settings
from driftline.streams.trainer.service import LabeledReader, Trainer
from tests.helpers import StoredMessage

TOPIC = "ns.labeled"


class Eof(StoredMessage):
    def error(self) -> Any:  # type: ignore[override]
        return KafkaError(KafkaError._PARTITION_EOF)


class ScriptedConsumer:
    """Hands out prepared batches, one per consume() call, then nothing."""

    def __init__(self, batches: list[list[StoredMessage]]) -> None:
        self.batches, self.assigned, self.consumed = batches, 0, 0

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})

    def assign(self, partitions: list[Any]) -> None:
        self.assigned += 1

    def consume(self, n: int, timeout: float) -> list[StoredMessage]:
        self.consumed += 1
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def labeled(catalog: SchemaCatalog, rid: str, label: str, at: int, model: str = "fraud") -> bytes:
    return encode(catalog.latest("driftline.Labeled"), {
        "request_id": rid, "model": model, "model_version": "1", "variant": "champion", "score": 0.7,
        "predicted": "fraud", "label": label, "target": None, "event_time": at - 5, "label_time": at,
        "features": b"\x00" * 16})


def test_the_reader_reads_on_from_where_it_was(catalog: SchemaCatalog) -> None:
    first = [StoredMessage(TOPIC, labeled(catalog, f"r{i}", "fraud" if i % 2 else "legit", 1000 + i), i,
                           partition_=i % 2) for i in range(6)]
    consumer = ScriptedConsumer([
        first + [StoredMessage(TOPIC, b"not avro", 6)],
        [Eof(TOPIC, None, 7, partition_=0), Eof(TOPIC, None, 4, partition_=1)],
        [],  # second call: nothing new, and both partitions are known to be at their end
        [StoredMessage(TOPIC, labeled(catalog, "late", "fraud", 2000), 8), Eof(TOPIC, None, 9, partition_=0)],
    ])
    reader = LabeledReader(consumer, TOPIC, catalog, SkipLog(logging.getLogger("test")))
    assert reader.read_new() == 6
    assert reader.read_new() == 0
    assert reader.read_new() == 1
    assert consumer.assigned == 1  # one assignment for the reader's life: never from offset 0 again
    rows = reader.rows("fraud", 1003, positive="fraud")
    assert [r.request_id for r in rows] == ["r3", "r4", "r5", "late"]
    assert [r.truth for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert reader.rows("other", 0, positive="fraud") == []


def test_waiting_uses_the_injected_clock_and_sleep(catalog: SchemaCatalog) -> None:
    now = [1_000.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    reader = LabeledReader(ScriptedConsumer([]), TOPIC, catalog, SkipLog(logging.getLogger("test")))
    trainer = Trainer(load_settings(broker="127.0.0.1:1"), catalog, clock=lambda: now[0], sleep=sleep, reader=reader)
    answers = iter([None, None, "ready"])
    assert trainer.wait_for("labels", lambda: next(answers), timeout_s=60) == "ready"
    assert slept == [2.0, 2.0]
    assert trainer.wait_for("labels", lambda: None, timeout_s=7) is None  # gives up on the fake clock, at once
    assert now[0] == 1_000.0 + 4 + 8
