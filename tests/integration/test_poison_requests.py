"""Requests that used to stop workers: a header name that is not UTF-8, a 2 MB key, thousands of headers.

Before, the first crash-looped every worker that read its partition (the
client raises on such a header name), and the other two made dead letters too
large to produce, which stalled the score path behind a healthy /healthz.
Now each goes to the dead letters, bounded, and the requests behind them are
served.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.deadletters import ERROR_HEADER, record_bytes
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics, ensure_topics
from driftline.streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess, produce, valid_requests
from tests.rawheaders import produce_raw_headers

pytestmark = pytest.mark.kafka
LIMIT = 200_000


def test_poison_requests_go_to_the_dead_letters_and_the_rest_is_served(
        broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(broker=broker.bootstrap, namespace=namespace, partitions={"requests": 1})
    requests_t, pred_t, dlq_t = settings.topic("requests"), settings.topic("predictions"), settings.topic("deadletter")
    # Records of 2 and 1.5 MB reach a worker only where the requests topic takes them: Apache Kafka refuses
    # anything over max.message.bytes (about 1 MiB by default), Tansu has no limit (and accepts the setting).
    create_topics(settings.confluent(), {requests_t: 1}, configs={requests_t: {"max.message.bytes": "8000000"}})
    ensure_topics(settings)
    ids, items = valid_requests(catalog, generator, 500, seed=7)
    produce(broker.bootstrap, requests_t, items[:300])  # the bad record comes when the code is warm
    produce_raw_headers(broker.bootstrap, requests_t, [(b"k-raw", items[0][1], [(b"\xff\xfename", b"v")])])
    big = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 8_000_000})
    refused: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            refused.append(err)

    big.produce(requests_t, b"garbage", b"K" * 2_000_000, on_delivery=delivered)
    big.produce(requests_t, b"more garbage", b"k-headers", headers=[(f"h{i}", b"x" * 300) for i in range(5000)],
                on_delivery=delivered)
    assert big.flush(30) == 0
    assert not refused, refused
    produce(broker.bootstrap, requests_t, items[300:])

    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, partitions__requests="1",
                           deadletter_max_bytes=str(LIMIT)).start()
    collector = Collector(broker.bootstrap, {pred_t: 4, dlq_t: 1})
    try:
        records = collector.until(
            lambda r: len(r[dlq_t]) >= 3 and len({m.key() for m in r[pred_t]}) >= 500, timeout_s=90,
            check=lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:]))
        assert worker.healthz() == {"status": "alive"}
        metrics = worker.metrics()
    finally:
        collector.close()
        assert worker.stop() == 0, worker.log()[-3000:]
    assert {m.key().decode() for m in records[pred_t]} == set(ids)
    dead = records[dlq_t]
    assert len(dead) == 3
    for d in dead:
        assert record_bytes(d.key(), d.value(), d.headers()) <= LIMIT
    reasons = Counter(dict(d.headers())[ERROR_HEADER + "reason"].decode() for d in dead)
    assert reasons == {"malformed_headers": 1, "bad_magic": 2}
    by_reason = {dict(d.headers())[ERROR_HEADER + "reason"]: d for d in dead}
    unreadable = by_reason[b"malformed_headers"]
    assert (unreadable.key(), unreadable.value()) == (b"k-raw", items[0][1])  # key and value kept as sent
    huge_key = next(d for d in dead if dict(d.headers()).get(ERROR_HEADER + "key.size") == b"2000000")
    assert huge_key.value() == b"garbage"
    many = next(d for d in dead if d.key() == b"k-headers")
    assert int(dict(many.headers())[ERROR_HEADER + "headers.dropped"]) > 4000
    assert re.search(r'driftline_dead_letters_total\{model="fraud",reason="malformed_headers",stage="decode"\} 1\.0',
                     metrics)
