"""driftline beside a real Confluent-compatible Schema Registry (Apicurio, in memory; see tests/registry/server.py).

Confluent's own clients on both sides: ``AvroSerializer`` writes requests
and labels with registry ids, ``AvroDeserializer`` reads driftline's
predictions, alerts and labeled events back. Apache Kafka only: the registry
is a production concern, and the broker's part is the same on both.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from driftline.inference.deployment import Deployment
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.schemas.codec import HEADER, BatchDecoder, encode
from driftline.streams.core.pipeline import ERROR_HEADER
from driftline.streams.errors import ConfigError
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.control import write_deployment
from driftline.streams.kafka.topics import create_topics
from driftline.streams.registry import (
    LOOKUP_BURST,
    LOOKUPS_PER_S,
    VERIFY_EVERY_S,
    SchemaRegistry,
    use_registry_ids,
)
from driftline.streams.settings import REPO_ROOT, SchemaRegistryConfig, load_settings
from tests.helpers import Collector, WorkerProcess, produce
from tests.registry.server import RegistryServer, free_port

pytestmark = pytest.mark.kafka
ON_KAFKA = pytest.mark.parametrize("broker", ["kafka"], indirect=True)
CARD = "driftline.examples.CardTransaction"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("registry") / "registry.log").start()
    try:
        yield server
    finally:
        server.stop()


def avsc(name: str) -> str:
    return (builtin_schema_dir() / name).read_text()


def requests_of(generator: Any, rng: Any, n: int, *, version: int) -> list[dict[str, Any]]:
    records, _ = generator.generate(n, rng)
    out = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]  # a null ip_risk is a dead letter
    return out if version == 2 else [{k: v for k, v in r.items() if k != "country"} for r in out]


def serialize(ser: AvroSerializer, topic: str, records: list[dict[str, Any]], key: str) -> list[tuple[bytes, bytes]]:
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [(str(r[key]).encode(), ser(r, ctx)) for r in records]


@ON_KAFKA
def test_confluent_serializers_write_requests_and_read_every_driftline_topic(
    broker: Broker, registry: RegistryServer, namespace: str, tmp_path: Path, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace, feedback=True,
                             schema_registry={"url": registry.url})
    create_topics(settings.confluent(), settings.topic_partitions())
    write_deployment(Producer(settings.confluent()), settings, Deployment("fraud", "99"))  # refused: an alert
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, feedback="true",
                           schema_registry={"url": registry.url}).start()
    client = SchemaRegistryClient({"url": registry.url})
    requests = settings.topic("requests")
    topics = {settings.topic(t): n for t, n in (("predictions", 4), ("deadletter", 1), ("alerts", 1), ("labeled", 4))}
    collector = Collector(broker.bootstrap, topics)
    try:
        # Two teams' producers at once, one on v1 and one on v2 of the request schema, each registering its own.
        v1 = serialize(AvroSerializer(client, avsc("card_transaction.v1.avsc")), requests,
                       requests_of(generator, rng, 300, version=1), "card_id")
        v2_records = requests_of(generator, rng, 300, version=2)
        v2 = serialize(AvroSerializer(client, avsc("card_transaction.v2.avsc")), requests, v2_records, "card_id")
        ids = {int.from_bytes(v[1:5], "big") for _, v in v1 + v2}
        assert ids == {client.get_version(f"{requests}-value", n).schema_id for n in (1, 2)} and len(ids) == 2
        # An incompatible change (amount becomes a string) is refused by the subject's BACKWARD rule.
        bad = json.loads(avsc("card_transaction.v2.avsc"))
        next(f for f in bad["fields"] if f["name"] == "amount")["type"] = "string"
        with pytest.raises(Exception, match="(?i)incompatible"):
            client.register_schema(f"{requests}-value", Schema(json.dumps(bad), "AVRO"))
        garbage = [(b"g", HEADER.pack(0, 777_777) + v[5:]) for _, v in v1[:20]]  # an id nobody registered
        produce(broker.bootstrap, requests, [*v1, *v2, *garbage], partitioner="murmur2_random")

        wanted = {r["request_id"] for r in v2_records}
        got = collector.until(lambda r: len(r[settings.topic("predictions")]) >= 600
                              and len(r[settings.topic("deadletter")]) >= 20
                              and len(r[settings.topic("alerts")]) >= 1,
                              timeout_s=90, check=lambda: _alive(worker))

        # Confluent's deserializer reads predictions with the ids driftline registered for them.
        reader = AvroDeserializer(client)
        preds_topic = settings.topic("predictions")
        preds = [reader(m.value(), SerializationContext(preds_topic, MessageField.VALUE))
                 for m in got[preds_topic]]
        assert len({p["request_id"] for p in preds}) == 600 and wanted <= {p["request_id"] for p in preds}
        assert {p["schema_id"] for p in preds} == ids  # each prediction names the writer id of its request
        registered = client.get_latest_version(f"{preds_topic}-value").schema_id
        assert {int.from_bytes(m.value()[1:5], "big") for m in got[preds_topic]} == {registered}

        alerts_topic = settings.topic("alerts")
        alert = reader(got[alerts_topic][0].value(), SerializationContext(alerts_topic, MessageField.VALUE))
        assert alert["model"] == "fraud" and alert["model_version"] == "99"

        dead = got[settings.topic("deadletter")]
        assert {m.value() for m in dead} == {v for _, v in garbage}  # original bytes
        why = {dict(m.headers())[ERROR_HEADER + "exception.message"].decode() for m in dead}
        assert why == {f"schema id 777777 is not in the schema registry at {registry.url}; the producer must "
                       "register its schema there (Confluent serializers do so unless auto.register.schemas is off)"}

        # Labels written by Confluent's serializer join; driftline's labeled events read back the same way.
        label_ser = AvroSerializer(client, avsc("feedback.v1.avsc"))
        labels = [{"request_id": p["request_id"], "label": "1" if p["score"] > 0.5 else "0", "target": None,
                   "event_time": int(time.time() * 1000)} for p in preds]
        produce(broker.bootstrap, settings.topic("feedback"),
                serialize(label_ser, settings.topic("feedback"), labels, "request_id"), partitioner="murmur2_random")
        labeled_topic = settings.topic("labeled")
        got = collector.until(lambda r: len(r[labeled_topic]) >= 600, timeout_s=90, check=lambda: _alive(worker))
        context = SerializationContext(labeled_topic, MessageField.VALUE)
        joined = [reader(m.value(), context) for m in got[labeled_topic]]
        assert {j["request_id"] for j in joined} == {p["request_id"] for p in preds}
        assert all(j["label"] == ("1" if j["score"] > 0.5 else "0") for j in joined)
        assert 'driftline_dead_letters_total{model="fraud",reason="unknown_schema",stage="decode"} 20.0' in \
            worker.metrics()
    finally:
        collector.close()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]


def _alive(worker: WorkerProcess) -> None:
    assert worker.alive(), worker.log()[-3000:]


@ON_KAFKA
def test_a_hung_registry_dead_letters_new_ids_keeps_the_worker_up_and_recovers(
    broker: Broker, registry: RegistryServer, namespace: str, tmp_path: Path, catalog: SchemaCatalog,
    generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    create_topics(settings.confluent(), settings.topic_partitions())
    client = SchemaRegistryClient({"url": registry.url})
    requests = settings.topic("requests")
    id1 = client.register_schema(f"{requests}-value", Schema(avsc("card_transaction.v1.avsc"), "AVRO"))
    id2 = client.register_schema(f"{requests}-value", Schema(avsc("card_transaction.v2.avsc"), "AVRO"))
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path,
                           schema_registry={"url": registry.url, "wait_s": 3, "timeout_s": 1}).start()
    collector = Collector(broker.bootstrap, {settings.topic("predictions"): 4, settings.topic("deadletter"): 1})
    v2 = catalog.get(CARD, 2)

    def framed(sid: int, version: int, n: int) -> list[tuple[bytes, bytes]]:
        schema = catalog.get(CARD, version)
        return [(r["card_id"].encode(), HEADER.pack(0, sid) + encode(schema, r)[HEADER.size:])
                for r in requests_of(generator, rng, n, version=version)]

    try:
        produce(broker.bootstrap, requests, framed(id1, 1, 100))
        collector.until(lambda r: len(r[settings.topic("predictions")]) >= 100, 60, check=lambda: _alive(worker))
        registry.pause()
        try:
            held = framed(id2, 2, 100)  # the worker has not seen id2 yet
            produce(broker.bootstrap, requests, held)
            got = collector.until(lambda r: len(r[settings.topic("deadletter")]) >= 100, 60,
                                  check=lambda: _alive(worker))
            dead = got[settings.topic("deadletter")]
            assert {dict(m.headers())[ERROR_HEADER + "reason"] for m in dead} == {b"registry_unavailable"}
            assert {m.value() for m in dead} == {v for _, v in held}  # nothing lost: the original bytes
            status, body = _readyz_until(worker, 503)
            assert "unreachable" in body["checks"]["schema_registry"], body
            assert worker.healthz() == {"status": "alive"}
        finally:
            registry.resume()
        status, body = _readyz_until(worker, 200)
        assert body["checks"]["schema_registry"] == "ok"
        produce(broker.bootstrap, requests, framed(id2, 2, 100))
        collector.until(lambda r: len(r[settings.topic("predictions")]) >= 200, 60, check=lambda: _alive(worker))
        assert len(collector.records[settings.topic("deadletter")]) == 100
        assert v2.id != id2  # the registry's id, not the file's hash, is what the worker resolved
    finally:
        registry.resume()
        collector.close()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]


def _readyz_until(worker: WorkerProcess, status: int, timeout_s: float = 30) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = worker.readyz()
        if got[0] == status:
            return got
        assert time.monotonic() < deadline, f"/readyz still {got} after {timeout_s}s"
        _alive(worker)
        time.sleep(0.3)


def test_garbage_ids_are_asked_about_once(registry: RegistryServer, catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    """A flood of unknown ids: one registry request per id, then the negative cache answers."""
    source = SchemaRegistry(SchemaRegistryConfig(url=registry.url, unknown_ttl_s=600))
    files = SchemaCatalog.from_dirs([builtin_schema_dir()])
    files.source = source
    decoder = BatchDecoder(files, files.latest(CARD), max_bytes=1 << 20)
    good = encode(files.latest(CARD), requests_of(generator, rng, 1, version=2)[0])
    values = [HEADER.pack(0, 900_000 + i % 25) + good[HEADER.size:] for i in range(5_000)]
    for _ in range(3):
        decoder.prepare(values)
        out = decoder.decode(values)
        assert {f.reason for f in out.failures} == {"unknown_schema"} and len(out.failures) == 5_000
    assert source.lookups == 25
    # What decode would not read as Avro anyway is not asked about: JSON, another magic byte, oversized.
    junk = [b'{"amount": 1}', b"\x01" + good[1:], HEADER.pack(0, 901_000) + b"x" * (1 << 21)]
    decoder.prepare(junk * 100)
    assert source.lookups == 25
    # Random ids, every one new: a budget of lookups, not one request per record.
    flood = [HEADER.pack(0, 1_000_000 + i) + good[HEADER.size:] for i in range(2_000)]
    started = time.monotonic()
    decoder.prepare(flood)
    assert source.lookups - 25 <= LOOKUP_BURST + LOOKUPS_PER_S * (time.monotonic() - started) + 1
    reasons = {f.message for f in decoder.decode(flood[-5:]).failures}
    assert any("was not looked up" in m for m in reasons), reasons


def test_credentials_in_the_url_never_reach_a_log_and_cannot_be_given_twice(
    registry: RegistryServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = registry.url.replace("http://", "http://alice:S3CRETpw@")
    caplog.set_level(logging.DEBUG)
    source = SchemaRegistry(SchemaRegistryConfig(url=secret_url))
    source.check()
    assert source.fetch(123_456_789) is None  # asked, answered 404
    assert source.url == registry.url
    assert "S3CRETpw" not in caplog.text and "alice" not in caplog.text
    with pytest.raises(ConfigError, match="not both"):
        SchemaRegistry(SchemaRegistryConfig(url=secret_url, username="bob", password="pw"))  # noqa: S106
    refused = cli("schemas", "register", env={"DRIFTLINE_SCHEMA_REGISTRY__URL": "ftp://alice:S3CRETpw@host/x"})
    assert refused.returncode == 2 and "S3CRETpw" not in refused.stderr and "ftp://***@host/x" in refused.stderr


def test_a_registry_that_lost_its_ids_makes_the_worker_not_ready(tmp_path: Path) -> None:
    """A registry restarted empty: the id driftline writes predictions with now means another schema, or nothing."""
    first = RegistryServer(tmp_path / "r1.log").start()
    try:
        settings = load_settings(namespace="lost", schema_registry={"url": first.url})
        catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
        source = SchemaRegistry(settings.schema_registry)
        use_registry_ids(catalog, source, settings, register=True)
        assert source.recheck() is None  # nothing to re-check yet, nothing wrong
        source._verified -= VERIFY_EVERY_S  # the next periodic check is due
        assert source.recheck() is None  # the ids still mean our schemas
        reader = SchemaCatalog.from_dirs([builtin_schema_dir()])  # another process: files, no registry ids yet
        reader.source = source
        fetched = reader.resolve(catalog.latest("driftline.Prediction").id)
        assert fetched is not None and (fetched.subject, fetched.version) == ("driftline.Prediction", 1)
    finally:
        first.stop()
    second = RegistryServer(tmp_path / "r2.log", port=first.port).start()  # same address, empty storage
    try:
        other = SchemaRegistryClient({"url": second.url})
        other.register_schema("someone-else-value", Schema(avsc("card_transaction.v1.avsc"), "AVRO"))
        source._verified -= VERIFY_EVERY_S
        problem = source.recheck()
        assert problem is not None and "no longer holds driftline." in problem and "restart the worker" in problem
        assert source.problem == problem  # what /readyz shows
    finally:
        second.stop()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "driftline.streams.cli", *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **env})


def test_schemas_register_checks_compatibility_and_a_dead_registry_is_one_line(
    registry: RegistryServer, namespace: str, tmp_path: Path
) -> None:
    env = {"DRIFTLINE_NAMESPACE": namespace, "DRIFTLINE_SCHEMA_REGISTRY__URL": registry.url}
    first = cli("schemas", "register", env=env)
    assert first.returncode == 0, first.stderr
    assert f"{namespace}.predictions-value" in first.stdout and f"{namespace}.requests-value" in first.stdout
    # 13 outputs (the retrain request, the alert and labeled in 2 versions each, scored in 3, predictions on 2
    # topics, feedback, explanations) and the example's 2 request versions
    assert first.stdout.count("registered now") == 15, first.stdout
    again = cli("schemas", "register", env=env)
    assert again.returncode == 0 and "registered now" not in again.stdout
    assert again.stdout.count("already registered") == 15

    bad = json.loads(avsc("prediction.v1.avsc"))
    bad["fields"].append({"name": "region", "type": "string"})  # a new field without a default: not BACKWARD
    (tmp_path / "prediction.v2.avsc").write_text(json.dumps(bad))
    refused = cli("schemas", "register", env={**env, "DRIFTLINE_SCHEMA_DIRS": json.dumps([str(tmp_path)])})
    assert refused.returncode == 1
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, refused.stderr
    assert f"driftline.Prediction v2 is incompatible with subject {namespace}.predictions-value" in line
    assert "rule BACKWARD" in line

    dead = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    for args in (("schemas", "register"), ("worker",)):
        done = cli(*args, env={**env, "DRIFTLINE_SCHEMA_REGISTRY__URL": dead, "DRIFTLINE_BROKER": "127.0.0.1:1"})
        assert done.returncode == 2, done.stderr[-2000:]  # a configuration error
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"driftline: schema registry at {dead} does not answer") and "Traceback" not in \
            done.stderr, done.stderr[-2000:]
