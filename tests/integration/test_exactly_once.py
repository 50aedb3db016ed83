"""processing_guarantee=exactly_once: kill -9 the worker again and again; every request is answered exactly once.

Runs on Apache Kafka only: the embedded broker shows aborted transactions to
read_committed readers, so there the worker must refuse exactly-once at start
(the second test), not promise it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode_many
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics, iter_topic
from driftline.streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess, produce

pytestmark = pytest.mark.kafka

N = 60_000
KILLS = 3


def request_id(catalog: SchemaCatalog, value: bytes | None) -> str:
    return str(decode(catalog, value)[1]["request_id"])


@pytest.mark.parametrize("broker", ["kafka"], indirect=True)
def test_kill_9_three_times_every_request_exactly_once(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    create_topics(settings.confluent(), settings.topic_partitions())
    records, _ = generator.generate(N, rng, step_ms=0)
    for r in records[::50]:  # 2 % invalid: dead letters, which must also appear exactly once
        r["amount"] = float("nan")
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
    produce(broker.bootstrap, settings.topic("requests"),
            [(r["card_id"].encode(), v) for r, v in zip(records, values, strict=True)])
    wanted = {r["request_id"] for r in records}
    pred_t, dlq_t = settings.topic("predictions"), settings.topic("deadletter")
    # Small batches and transactions, so each kill lands inside an open transaction, not after the end.
    knobs = {"processing_guarantee": "exactly_once", "batch_max": "50", "max_inflight_batches": "2",
             "transaction_ms": "50"}
    collector = Collector(broker.bootstrap, {pred_t: settings.partitions.predictions, dlq_t: 1})
    done = lambda r: len(r[pred_t]) + len(r[dlq_t])  # noqa: E731 - committed outputs seen so far
    try:
        for kill in range(1, KILLS + 1):
            worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, **knobs).start()
            target = kill * N // (KILLS + 2)
            collector.until(lambda r, t=target: done(r) >= t, timeout_s=120,
                            check=lambda w=worker: None if w.alive() else pytest.fail(w.log()[-3000:]))
            worker.kill()
            assert done(collector.records) < N, f"the worker finished before kill {kill}; nothing tested"
        last = WorkerProcess(broker.bootstrap, namespace, tmp_path, **knobs).start()
        try:
            collector.until(lambda r: done(r) >= N, timeout_s=180,
                            check=lambda: None if last.alive() else pytest.fail(last.log()[-3000:]))
        finally:
            assert last.stop() == 0, last.log()[-3000:]
    finally:
        collector.close()
    # Read both topics to their end once more, as a read_committed consumer independent of the collector.
    conf = settings.confluent()
    answered = Counter(request_id(catalog, m.value()) for m in iter_topic(conf, pred_t))
    dead = Counter(request_id(catalog, m.value()) for m in iter_topic(conf, dlq_t))
    assert dead, "the stream had invalid requests; none reached the dead letters"
    twice = {rid: n for rid, n in (answered + dead).items() if n > 1}
    assert not twice, f"{len(twice)} requests answered more than once, e.g. {list(twice.items())[:5]}"
    assert set(answered) | set(dead) == wanted, f"{len(wanted - set(answered) - set(dead))} requests lost"


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_exactly_once_is_refused_at_start_on_a_broker_without_transactions(
    broker: Broker, namespace: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, processing_guarantee="exactly_once").start()
    assert worker.proc is not None
    code = worker.proc.wait(timeout=120)
    log = worker.log()
    assert code == 2, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("driftline: processing_guarantee=exactly_once needs a broker with transactions")
    assert "saw ['aborted', 'committed']" in last and "Traceback" not in log
