"""Issue 7 on the embedded broker: labels and predictions waiting in the join survive a kill -9.

Before the fix the feedback consumer stored offsets as it consumed and the
join lived in memory only: 1,000 labels waiting at a kill -9 were gone after
the restart (neither joined nor dead-lettered).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode, encode_many
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics
from driftline.streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess
from tests.integration.test_feedback import counter

pytestmark = pytest.mark.kafka
TTL_S = 30  # long enough for the restart (the dead member's 6 s session, the group joins), short for the test


def test_waiting_labels_and_predictions_survive_a_kill_9(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    env = {"feedback": "true", "feedback_ttl_s": str(TTL_S)}
    card, fb = catalog.latest("driftline.examples.CardTransaction"), catalog.latest("driftline.Feedback")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"})
    t = {n: settings.topic(n) for n in ("labeled", "deadletter", "feedback-state")}
    collector = Collector(broker.bootstrap, {t["labeled"]: 4, t["deadletter"]: 1, t["feedback-state"]: 4})

    recs, labels = generator.generate(1200, rng, start_ms=int(time.time() * 1000), step_ms=0)
    recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
    ids = [r["request_id"] for r in recs]
    early, scored_first = ids[:1000], ids[1000:]  # labels before their requests; requests before their labels

    def send_requests(batch: list[dict]) -> None:
        for r, v in zip(batch, encode_many(card, batch), strict=True):
            producer.produce(settings.topic("requests"), v, r["card_id"].encode())
        producer.flush(30)

    def send_labels(rids: list[str], ys: np.ndarray) -> None:
        now = int(time.time() * 1000)
        for rid, y in zip(rids, ys.tolist(), strict=True):
            rec = {"request_id": rid, "label": "fraud" if y else "legit", "target": None, "event_time": now}
            producer.produce(settings.topic("feedback"), encode(fb, rec), rid.encode())
        producer.flush(30)

    def live_state(r: dict) -> int:
        latest: dict[bytes, bytes | None] = {}
        for m in r[t["feedback-state"]]:
            latest[m.key()] = m.value()
        return sum(v is not None for v in latest.values())

    def pending(worker: WorkerProcess) -> tuple[float, float]:
        try:
            text = worker.metrics()
        except OSError:  # not serving yet
            return (0.0, 0.0)
        return (counter(text, "driftline_feedback_pending", kind="labels"),
                counter(text, "driftline_feedback_pending", kind="predictions"))

    first = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env).start()
    second = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env)
    try:
        alive = lambda: None if first.alive() else pytest.fail(first.log()[-3000:])  # noqa: E731
        send_requests(recs[1000:])
        send_labels(early, labels[:1000])
        collector.until(lambda r: live_state(r) >= 1200, timeout_s=90, check=alive)  # their state records
        deadline = time.monotonic() + 30
        while (held := pending(first)) != (1000, 200):  # and the join holds them all
            alive()
            assert time.monotonic() < deadline, f"the join holds {held} (labels, predictions)"
            time.sleep(0.2)
        first.kill()

        second.start()
        alive = lambda: None if second.alive() else pytest.fail(second.log()[-3000:])  # noqa: E731
        send_requests(recs[:500])  # half of the waiting labels join
        send_labels(scored_first, labels[1000:])  # the waiting predictions join
        got = collector.until(lambda r: len(r[t["labeled"]]) >= 700 and len(r[t["deadletter"]]) >= 500,
                              timeout_s=TTL_S + 90, check=alive)
        settle = time.monotonic() + 3  # anything late (a duplicate) would show here
        collector.until(lambda r: time.monotonic() > settle, timeout_s=10)
    finally:
        collector.close()
        for w in (first, second):
            if w.proc is not None:
                w.stop()

    joined = collections.Counter(m.key().decode() for m in got[t["labeled"]])
    dead = collections.Counter(m.key().decode() for m in got[t["deadletter"]])
    reasons = collections.Counter(dict(m.headers())["driftline.errors.reason"] for m in got[t["deadletter"]])
    duplicates = sum(n - 1 for n in joined.values()) + sum(n - 1 for n in dead.values())
    print(f"joined {len(joined)}, dead-lettered {len(dead)} ({dict(reasons)}), duplicates {duplicates}")
    assert set(joined) == set(early[:500]) | set(scored_first)
    assert set(dead) == set(early[500:]) and reasons == {b"no_prediction": 500}
    assert set(joined) | set(dead) == set(ids) and not set(joined) & set(dead)  # every label accounted for, once
    assert duplicates == 0, f"{duplicates} labels came out twice"
