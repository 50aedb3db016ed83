"""A real worker process against the embedded broker: valid, bad and second-model traffic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode
from driftline.streams.core.pipeline import ERROR_HEADER
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics
from driftline.streams.settings import load_settings
from tests.helpers import (
    HOUSING_SCHEMAS,
    Collector,
    WorkerProcess,
    bad_corpus,
    housing_records,
    model_dir_with_both,
    produce,
)

pytestmark = pytest.mark.kafka
MAX = 8192


def test_worker_scores_valid_and_dead_letters_bad_input(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    models = [{"name": "fraud"}, {"name": "housing"}]
    settings = load_settings(broker=broker.bootstrap, namespace=namespace, models=models)
    create_topics(settings.confluent(), settings.topic_partitions())
    worker = WorkerProcess(
        broker.bootstrap, namespace, tmp_path, models=models,
        model_dir=str(model_dir_with_both(tmp_path / "models")),
        schema_dirs=[str(HOUSING_SCHEMAS)], max_message_bytes=str(MAX),
    ).start()
    collector = Collector(broker.bootstrap, {settings.topic("predictions"): 4, settings.topic("deadletter"): 1})
    try:
        records, _ = generator.generate(3000, rng)
        card = catalog.latest("driftline.examples.CardTransaction")
        valid = [encode(card, {**r, "ip_risk": r["ip_risk"] or 0.1}) for r in records]
        corpus = bad_corpus(catalog, records[0], MAX)
        houses, _ = housing_records(500, rng)
        house = catalog.latest("driftline.tests.HouseSale")

        produce(broker.bootstrap, settings.topic("requests"),
                [(r["card_id"].encode(), v) for r, v in zip(records, valid, strict=True)])
        produce(broker.bootstrap, settings.topic("requests"), [(b"bad", v) for _, v, _, _ in corpus],
                headers=[("origin", b"test")])
        produce(broker.bootstrap, settings.topic("requests.housing"),
                [(h["house_id"].encode(), encode(house, h)) for h in houses])

        def alive() -> None:
            assert worker.alive(), worker.log()[-3000:]

        want_preds, want_dlq = len(records) + len(houses), len(corpus)
        got = collector.until(
            lambda r: len(r[settings.topic("predictions")]) >= want_preds
            and len(r[settings.topic("deadletter")]) >= want_dlq,
            timeout_s=90, check=alive,
        )
        preds = [decode(catalog, m.value())[1] for m in got[settings.topic("predictions")]]
        ids = Counter(p["request_id"] for p in preds)
        expected = {r["request_id"] for r in records} | {h["sale_id"] for h in houses}
        assert set(ids) == expected and max(ids.values()) == 1  # one prediction per valid request
        assert Counter(p["model"] for p in preds) == {"fraud": 3000, "housing": 500}
        assert all(m.key().decode() == decode(catalog, m.value())[1]["request_id"]
                   for m in got[settings.topic("predictions")][:50])

        dead = got[settings.topic("deadletter")]
        assert len(dead) == len(corpus)
        seen = Counter()
        for m in dead:
            h = dict(m.headers())
            assert h["origin"] == b"test" and m.key() == b"bad"
            assert h[ERROR_HEADER + "topic"] == settings.topic("requests").encode()
            seen[(h[ERROR_HEADER + "stage"].decode(), h[ERROR_HEADER + "reason"].decode())] += 1
        assert seen == Counter((stage, reason) for _, _, stage, reason in corpus)
        assert {m.value() for m in dead} == {v for _, v, _, _ in corpus}  # original bytes

        assert worker.alive() and worker.healthz() == {"status": "alive"}
        text = worker.metrics()
        assert 'driftline_requests_total{model="fraud",outcome="predicted"} 3000.0' in text
        assert 'driftline_dead_letters_total{model="fraud",reason="unknown_schema",stage="decode"} 1.0' in text
    finally:
        collector.close()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
