"""A retrain request for a version that is no longer the champion is rejected as superseded, naming both versions.

`make demo` printed `RETRAIN registered fraud v1 → v3 … next to v2`: a request
raised on v1 before v2's promotion was still trained, from v2's labels, under
v1's name.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from driftline.inference.deployment import Deployment
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode
from driftline.streams.core.events import RetrainEvent, read_retrain
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.control import write_deployment
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import load_settings
from driftline.streams.trainer.service import run_trainer

pytestmark = pytest.mark.kafka
# A trainer decision, the same on either broker: Apache Kafka only.
ONE_BROKER = pytest.mark.parametrize("broker", ["kafka"], indirect=True)


@ONE_BROKER
def test_a_request_for_a_replaced_champion_is_rejected_as_superseded(broker: Broker, namespace: str,
                                                           catalog: SchemaCatalog) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    now = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    write_deployment(producer, settings, Deployment("fraud", "1").promote("2", now))
    request = {"id": "drift-on-1", "model": "fraud", "model_version": "1", "stage": "requested",
               "reason": "data drift on v1", "alert_ids": [], "data_start": now, "data_end": now,
               "requested_at": now, "candidate_version": None}
    producer.produce(settings.topic("retrain"), encode(catalog.latest("driftline.RetrainRequest"), request), b"fraud")
    assert producer.flush(10) == 0
    assert run_trainer(settings, catalog, once=True) == 0
    events = [read_retrain(catalog, m.value()) for m in iter_topic(settings.confluent(), settings.topic("retrain"))]
    stages = [(e.stage, e.reason) for e in events if isinstance(e, RetrainEvent) and e.id == "drift-on-1"]
    assert [s for s, _ in stages] == ["requested", "rejected"], stages
    assert "superseded: v1 is no longer the champion (v2 is)" in stages[-1][1]
