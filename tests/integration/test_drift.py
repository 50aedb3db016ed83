"""Drift end to end on the embedded broker: calm traffic, then drift on two features."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from schemas.catalog import SchemaCatalog
from schemas.codec import decode, encode_many
from streams.broker import EmbeddedBroker
from streams.kafka import create_topics
from streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess

pytestmark = pytest.mark.kafka
DRIFTED = {"amount", "distance_from_last_km"}


def test_alerts_only_after_drift_only_on_drifted_features_and_a_retrain(
    broker: EmbeddedBroker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    create_topics(settings.confluent(), settings.topic_partitions())
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, window_s="2", window_grace_s="1").start()
    alerts_t, retrain_t, preds_t = settings.topic("alerts"), settings.topic("retrain"), settings.topic("predictions")
    collector = Collector(broker.bootstrap, {alerts_t: 1, retrain_t: 1, preds_t: 4})
    schema = catalog.latest("driftline.examples.CardTransaction")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    drift = generator.Drift(shift={"amount": 1.0, "distance_from_last_km": 1.5})

    def send(seconds: float, rate: int, drifting: bool) -> None:
        """Offer ``rate`` requests a second for ``seconds``, stamped with the send time."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tick = time.monotonic()
            recs, _ = generator.generate(rate // 10, rng, start_ms=int(time.time() * 1000), step_ms=0,
                                         drift=drift if drifting else generator.NO_DRIFT)
            recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
            for r, v in zip(recs, encode_many(schema, recs), strict=True):
                producer.produce(settings.topic("requests"), v, r["card_id"].encode())
            producer.poll(0)
            while time.monotonic() < tick + 0.1:  # pace the load: 10 chunks a second
                producer.poll(0.01)

    try:
        # Warm up until the worker answers, so calm windows really are scored.
        send(1.0, 1000, drifting=False)
        collector.until(lambda r: len(r[preds_t]) > 0, timeout_s=60,
                        check=lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:]))
        send(10.0, 1000, drifting=False)
        drift_start_ms = int(time.time() * 1000)
        send(8.0, 1000, drifting=True)
        producer.flush(30)
        got = collector.until(lambda r: len(r[retrain_t]) >= 1, timeout_s=60,
                              check=lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:]))
        alerts = [decode(catalog, m.value())[1] for m in got[alerts_t]]
        retrains = [decode(catalog, m.value())[1] for m in got[retrain_t]]
    finally:
        collector.close()
        worker.stop()

    def end_ms(a: dict) -> int:
        w = a["window_end"]
        return int(w.timestamp() * 1000) if hasattr(w, "timestamp") else int(w)

    assert alerts, "no alert after the drift"
    assert all(end_ms(a) > drift_start_ms for a in alerts), "an alert fired before the drift started"
    data_drift = {a["feature"] for a in alerts if a["kind"] == "data_drift"}
    assert data_drift == DRIFTED  # each drifted feature, and none of the untouched ones
    assert all(a["statistic"] in ("ks", "chi2") and a["value"] > a["threshold"] for a in alerts
               if a["kind"] == "data_drift")
    assert retrains[0]["stage"] == "requested" and retrains[0]["reason"]
    assert set(retrains[0]["alert_ids"]) <= {a["id"] for a in alerts}
