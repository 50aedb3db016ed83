"""kill -9 a worker mid-stream; after a restart every request has an output (duplicates allowed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics, iter_topic
from driftline.streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess, produce

pytestmark = pytest.mark.kafka


def test_kill_9_mid_stream_loses_nothing(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    create_topics(settings.confluent(), settings.topic_partitions())
    card = catalog.latest("driftline.examples.CardTransaction")
    records, _ = generator.generate(40_000, rng)
    values = [encode(card, r) for r in records]
    pred_t, dlq_t = settings.topic("predictions"), settings.topic("deadletter")
    produce(broker.bootstrap, settings.topic("requests"),
            [(r["card_id"].encode(), v) for r, v in zip(records, values, strict=True)])

    # Small batches so the kill lands between and inside batches, not after the end.
    first = WorkerProcess(broker.bootstrap, namespace, tmp_path, batch_max="200").start()
    collector = Collector(broker.bootstrap, {pred_t: 4, dlq_t: 1})
    try:
        collector.until(lambda r: len(r[pred_t]) + len(r[dlq_t]) >= 2_000, timeout_s=60,
                        check=lambda: None if first.alive() else pytest.fail(first.log()[-3000:]))
        first.kill()
        done_before_kill = len(collector.records[pred_t]) + len(collector.records[dlq_t])
        assert done_before_kill < len(records), "the worker finished before the kill; nothing tested"

        second = WorkerProcess(broker.bootstrap, namespace, tmp_path).start()
        wanted = {r["request_id"] for r in records}
        seen: set[str] = set()

        def all_covered(r: dict) -> bool:
            new = r[pred_t][len(seen_msgs):]
            seen_msgs.extend(new)
            seen.update(decode(catalog, m.value())[1]["request_id"] for m in new)
            return seen >= wanted or bool(r[dlq_t])

        seen_msgs: list = []
        try:
            collector.until(all_covered, timeout_s=120,
                            check=lambda: None if second.alive() else pytest.fail(second.log()[-3000:]))
        finally:
            assert second.stop() == 0, second.log()[-3000:]
    finally:
        collector.close()
    # Read the output topics to their end once more, independently of the collector.
    conf = settings.confluent()
    final = {decode(catalog, m.value())[1]["request_id"] for m in iter_topic(conf, pred_t)}
    dead = list(iter_topic(conf, dlq_t))
    assert dead == []  # all requests were valid
    assert final == wanted
