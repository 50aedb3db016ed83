"""Compaction of the state topics on Apache Kafka: the cleaner really runs, and a worker restarts from what it left.

``{ns}.models``, ``{ns}.drift-state`` and ``{ns}.feedback-state`` are created
with ``cleanup.policy=compact`` (``Settings.topic_configs``). Their readers
read them from offset 0 and keep the last value per key, so what they
restore must not change when the cleaner removes superseded records and
tombstones (the offsets they read then have gaps). The tests here make the
cleaner run within seconds (a segment rolls on an append 100 ms after its
first record, a closed dirty segment is due for cleaning within a second,
a tombstone goes 100 ms after its first cleaning), wait until it has
removed every superseded record, then start a worker on what is left.

Apache Kafka only: the embedded Tansu broker has no log cleaner (nothing is
ever compacted there, see ``driftline.streams.kafka.broker``), and it does
not refuse keyless records on "compacted" topics.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from driftline.inference.deployment import Deployment
from driftline.inference.registry import write_version
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode, encode_many
from driftline.streams.app.drift import latest_states
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.control import read_deployments, write_deployment
from driftline.streams.kafka.topics import create_topics, ensure_topics, iter_partitions, iter_topic
from driftline.streams.settings import EXAMPLE_MODELS, load_settings
from tests.helpers import Collector, WorkerProcess, produce_refusals
from tests.integration.test_feedback import counter

pytestmark = [pytest.mark.kafka, pytest.mark.parametrize("broker", ["kafka"], indirect=True)]

STATE_ROLES = ("models", "drift-state", "feedback-state")
# The cleaner within seconds. Kafka 4 refuses segment.bytes under 1 MiB, so segments roll by time: an append 100 ms
# after a segment's first record starts a new one (the active segment is never cleaned). max.compaction.lag.ms
# makes any closed dirty segment due at once, whatever the dirty ratio; a tombstone is removed by the first
# cleaning that runs delete.retention.ms after the one that first saw it.
FAST_CLEANER = {"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0",
                "max.compaction.lag.ms": "1000", "delete.retention.ms": "100"}
V1 = '[{"name": "fraud", "version": "1"}]'
EARLY, UNLABELED = 300, 100  # labels waiting for requests sent after the restart; predictions waiting for labels


def topic_configs(admin: AdminClient, topic: str) -> dict[str, Any]:
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=10)
    return dict(next(iter(futures.values())).result(timeout=10))


def speed_up_cleaner(admin: AdminClient, topics: list[str], timeout_s: float = 20) -> None:
    """Set FAST_CLEANER on ``topics``; wait until the broker describes it (KRaft applies an alter asynchronously)."""
    ops = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in FAST_CLEANER.items()]
    futures = admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, t, incremental_configs=ops)
                                               for t in topics])
    for f in futures.values():
        f.result(timeout=10)
    deadline = time.monotonic() + timeout_s
    for t in topics:
        while {k: topic_configs(admin, t)[k].value for k in FAST_CLEANER} != FAST_CLEANER:
            assert time.monotonic() < deadline, f"{t}: the broker still describes {topic_configs(admin, t)}"
            time.sleep(0.2)


def live(records: list[Any]) -> dict[tuple[int, bytes], bytes]:
    """The last value of every (partition, key), tombstones removing: what every reader of a state topic keeps."""
    latest: dict[tuple[int, bytes], bytes] = {}
    for m in records:
        if m.value() is None:
            latest.pop((m.partition(), m.key()), None)
        else:
            latest[(m.partition(), m.key())] = m.value()
    return latest


def high_watermarks(conf: Mapping[str, Any], topic: str, partitions: int) -> list[int]:
    consumer = Consumer({**conf, "group.id": "test-watermarks"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


@dataclass
class Compaction:
    """A state topic to compact: the last values before, and what is read from its start once compacted."""

    topic: str
    before: dict[tuple[int, bytes], bytes]  # live() of the topic once its writers stopped
    written: int  # records written (the partitions' high watermarks)
    after: list[Any] = field(default_factory=list)

    def superseded(self) -> set[int]:
        """Partitions that still hold a record that is not its key's last value (superseded, or a tombstone)."""
        return {m.partition() for m in self.after
                if m.value() is None or self.before.get((m.partition(), m.key())) != m.value()}

    def ticks(self) -> list[tuple[int, bytes, bytes]]:
        """A record for each partition not compacted yet that rewrites a key's last value (changes no reader's result).

        Appended after segment.ms, it rolls the partition's active segment,
        which the cleaner never touches, and gives the cleaner a next pass.
        """
        one = {p: (k, v) for (p, k), v in self.before.items()}
        return [(p, *one[p]) for p in sorted(self.superseded())]


def wait_compacted(conf: Mapping[str, Any], producer: Producer, topics: list[Compaction],
                   timeout_s: float = 60) -> None:
    """Read each topic from its start until every record left is its key's last value; ticks between reads."""
    deadline = time.monotonic() + timeout_s
    pending = list(topics)
    while True:
        for c in list(pending):
            c.after = list(iter_topic(conf, c.topic))
            if not c.superseded():
                pending.remove(c)
        if not pending:
            return
        assert time.monotonic() < deadline, "not compacted within {}s: {}".format(timeout_s, {
            c.topic: (len(c.after), sum(m.value() is None for m in c.after)) for c in pending})
        for c in pending:
            for p, k, v in c.ticks():
                producer.produce(c.topic, v, k, partition=p)
        assert producer.flush(10) == 0


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """fraud v1 (the example), v2 (the same model and profile) and v3 (no profile)."""
    root = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "fraud", root / "fraud")
    v1 = root / "fraud" / "1"
    manifest = json.loads((v1 / "manifest.json").read_text())
    onnx = (v1 / "model.onnx").read_bytes()
    write_version(root, onnx, {**manifest, "version": "2"}, extra_files={"profile.json": (v1 / "profile.json")
                                                                         .read_bytes()})
    write_version(root, onnx, {**manifest, "version": "3"})
    return root


def test_the_state_topics_are_created_compacted_and_the_rest_not(broker: Broker, namespace: str) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    admin = AdminClient(settings.confluent())
    state = {settings.topic(r) for r in STATE_ROLES}
    for topic in settings.topic_partitions():
        policy = topic_configs(admin, topic)["cleanup.policy"]
        if topic in state:  # set by driftline when it created the topic, not a broker default
            assert (policy.value, policy.source) == ("compact", ConfigSource.DYNAMIC_TOPIC_CONFIG.value), topic
        else:
            assert policy.value == "delete", (topic, policy.value)
    # A compacted topic is keyed: Kafka refuses a keyless record on each state topic, takes one elsewhere.
    for topic in sorted(state):
        _, refused = produce_refusals(broker.bootstrap, topic, [(None, b"{}")])
        assert len(refused) == 1, f"{topic} took a keyless record: it is not compacted"
    assert produce_refusals(broker.bootstrap, settings.topic("alerts"), [(None, b"{}")])[1] == []


def test_a_state_topic_made_without_compaction_is_reported(
    broker: Broker, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A models topic made before driftline compacted it (or auto-created by a producer) keeps ``delete``.

    Its deployments would go after retention.ms (7 days by default), and a
    worker started then would serve the configured version: creating topics
    skips an existing one, so the worker's start says what to set.
    """
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    models_t = settings.topic("models")
    create_topics(settings.confluent(), {models_t: 1})  # the broker's defaults
    with caplog.at_level(logging.WARNING, logger="driftline.streams.kafka.topics"):
        created = ensure_topics(settings)
    assert models_t not in created and settings.topic("drift-state") in created
    warned = [r.getMessage() for r in caplog.records
              if r.name == "driftline.streams.kafka.topics" and r.levelno == logging.WARNING]
    assert len(warned) == 1, warned  # the state topics made now are compacted: only the old one is named
    assert warned[0].startswith(f"topic {models_t} has cleanup.policy=delete, not compact"), warned
    assert topic_configs(AdminClient(settings.confluent()), models_t)["cleanup.policy"].value == "delete"  # unchanged


def test_readers_of_a_state_topic_start_at_its_low_watermark(broker: Broker, namespace: str) -> None:
    """``cleanup.policy=compact,delete`` (an operator's retention) or DeleteRecords moves a partition's start.

    Readers assign offset 0; Kafka answers "offset out of range" and the
    consumer (``auto.offset.reset=earliest``) starts at the low watermark:
    the records before it are gone, the rest is read to its end.
    """
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    admin = AdminClient(settings.confluent())
    models_t, drift_t, fb_t = (settings.topic(r) for r in STATE_ROLES)
    ops = [ConfigEntry("cleanup.policy", "compact,delete", incremental_operation=AlterConfigOpType.SET)]
    for f in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, t, incremental_configs=ops)
                                              for t in (models_t, drift_t, fb_t)]).values():
        f.result(timeout=10)
    producer = Producer(settings.producer_config())
    for version in ("1", "2", "3"):
        write_deployment(producer, settings, Deployment("fraud", version))
    for i in range(3):
        producer.produce(drift_t, json.dumps({"n": i}).encode(), b"fraud")
        producer.produce(fb_t, b"state-%d" % i, b"request-%d" % i, partition=2)
    assert producer.flush(10) == 0

    def delete_before(offset: int) -> None:
        """Move the start of partition 0 (2 of the feedback state); retried while the policy change propagates."""
        deadline = time.monotonic() + 20
        while True:
            futures = admin.delete_records([TopicPartition(models_t, 0, offset), TopicPartition(drift_t, 0, offset),
                                            TopicPartition(fb_t, 2, offset)], request_timeout=10)
            try:
                for f in futures.values():
                    f.result(timeout=10)
                return
            except Exception as exc:  # POLICY_VIOLATION: the topic is still compact-only on the broker
                assert time.monotonic() < deadline, exc
                time.sleep(0.2)

    delete_before(2)
    consumer = Consumer({**settings.confluent(), "group.id": "test-watermarks"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(models_t, 0), timeout=10) == (2, 3)
    finally:
        consumer.close()
    assert read_deployments(settings)["fraud"].champion == "3"
    assert {k: json.loads(v.value or b"") for k, v in latest_states(settings.confluent(), drift_t).items()} == {
        "fraud": {"n": 2}}
    assert [(m.key(), m.value()) for m in iter_partitions(settings.confluent(), fb_t, [2])] == [
        (b"request-2", b"state-2")]
    delete_before(3)  # nothing left before the end: read as empty, not waited for
    assert read_deployments(settings) == {}
    assert latest_states(settings.confluent(), drift_t) == {}
    assert list(iter_partitions(settings.confluent(), fb_t, [0, 1, 2, 3])) == []


def test_a_worker_restarts_from_compacted_state_topics(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, registry: Path, generator,  # type: ignore[no-untyped-def]
    rng: np.random.Generator,
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)  # the product's topics, compacted by the product
    conf = settings.confluent()
    admin = AdminClient(conf)
    models_t, drift_t, fb_t = (settings.topic(r) for r in STATE_ROLES)
    speed_up_cleaner(admin, [models_t, drift_t, fb_t])
    assert all(topic_configs(admin, t)["cleanup.policy"].value == "compact" for t in (models_t, drift_t, fb_t))

    card, fb = catalog.latest("driftline.examples.CardTransaction"), catalog.latest("driftline.Feedback")
    producer = Producer(settings.producer_config())  # murmur2: labels land where their predictions do
    env: dict[str, Any] = {"model_dir": str(registry), "models": V1, "feedback": "true", "feedback_ttl_s": "600",
                           "window_events": "250", "window_grace_s": "0", "batch_max": "250"}

    def requests(n: int) -> list[dict[str, Any]]:
        recs, _ = generator.generate(n, rng, start_ms=int(time.time() * 1000), step_ms=0)
        return [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]

    def send_requests(recs: list[dict[str, Any]]) -> None:
        for r, v in zip(recs, encode_many(card, recs), strict=True):
            producer.produce(settings.topic("requests"), v, r["card_id"].encode())
        assert producer.flush(30) == 0

    def send_labels(rids: list[str]) -> None:
        now = int(time.time() * 1000)
        for rid in rids:
            rec = {"request_id": rid, "label": "legit", "target": None, "event_time": now}
            producer.produce(settings.topic("feedback"), encode(fb, rec), rid.encode())
        assert producer.flush(30) == 0

    def windows_done() -> int:
        state = {k: r.value for k, r in latest_states(conf, drift_t).items()}.get("fraud")
        return 0 if state is None else int(json.loads(state)["policy"]["window_index"])

    # 1. A worker writes the state: drift windows, and the label join's entries, most of them tombstoned later.
    early = requests(EARLY)  # their labels wait through the restart; the requests come after it
    scored = requests(3000)  # predicted now; all but the last UNLABELED get their labels now
    early_ids, scored_ids = [r["request_id"] for r in early], [r["request_id"] for r in scored]
    waiting = {rid.encode() for rid in early_ids + scored_ids[-UNLABELED:]}
    first = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env).start()
    state = Collector(broker.bootstrap, {fb_t: 4})
    try:
        alive = lambda: None if first.alive() else pytest.fail(first.log()[-3000:])  # noqa: E731
        send_labels(early_ids)
        send_requests(scored)
        keys = lambda r: {k for _, k in live(r[fb_t])}  # noqa: E731
        state.until(lambda r: len(keys(r)) == EARLY + len(scored), timeout_s=90, check=alive)
        send_labels(scored_ids[:-UNLABELED])
        state.until(lambda r: keys(r) == waiting, timeout_s=60, check=alive)  # joined ones tombstoned
        deadline = time.monotonic() + 60
        while windows_done() < 10:
            alive()
            assert time.monotonic() < deadline, f"only {windows_done()} drift windows: {first.log()[-3000:]}"
            time.sleep(0.2)
    finally:
        state.close()
        assert first.stop() == 0, first.log()[-3000:]
    stopped_at = windows_done()  # the last drift state the first worker wrote

    # 2. Many deployments of fraud, the last one known; a drift state for a model that goes away.
    now = int(time.time() * 1000)
    dep = Deployment("fraud", "1")
    for _ in range(40):
        for change in (lambda d: d.promote("2", now), lambda d: d.start_canary("3", 0.2, now),
                       lambda d: d.stop_canary(now), lambda d: d.add_shadow("3", now),
                       lambda d: d.remove_shadow("3", now), lambda d: d.promote("1", now)):
            dep = change(dep)
            write_deployment(producer, settings, dep)
    final = dep.promote("2", now).add_shadow("3", now)  # champion v2, v3 in shadow
    write_deployment(producer, settings, final)
    fraud_state = latest_states(conf, drift_t)["fraud"].value
    assert fraud_state is not None
    producer.produce(drift_t, fraud_state, b"retired")
    producer.produce(drift_t, None, b"retired")
    assert producer.flush(10) == 0

    # 3. Wait for the cleaner: every superseded record and every tombstone gone.
    topics = []
    for topic, n in ((models_t, 1), (drift_t, 1), (fb_t, 4)):
        topics.append(Compaction(topic, live(list(iter_topic(conf, topic))), sum(high_watermarks(conf, topic, n))))
    models, drift, feedback = topics
    assert set(models.before) == {(0, b"fraud")}
    assert Deployment.from_dict(json.loads(models.before[(0, b"fraud")])) == final  # (plus who wrote it, and why)
    assert set(drift.before) == {(0, b"fraud")} and {k for _, k in feedback.before} == waiting
    started = time.monotonic()
    wait_compacted(conf, producer, topics)
    print(f"compacted in {time.monotonic() - started:.1f}s: " + ", ".join(
        f"{c.topic} {c.written} -> {len(c.after)} records" for c in topics))
    # Far fewer records than written are left (the last values, and a few ticks the cleaner has not reached yet).
    assert models.written > 240 and len(models.after) <= 5
    assert drift.written >= stopped_at + 2 and len(drift.after) <= 5  # a record per window at least
    assert feedback.written >= EARLY + len(scored) + len(scored) - UNLABELED  # waiting entries, then tombstones
    assert len(feedback.after) <= len(waiting) + 5 * 4
    for c in topics:
        assert live(c.after) == c.before  # compaction changes no reader's result
        offsets = [m.offset() for m in c.after if m.partition() == 0]
        assert len(offsets) < offsets[-1] + 1  # read from offset 0: offsets with no record, which readers pass
    assert not any(m.key() == b"retired" for m in drift.after)  # its record and tombstone both removed

    # 4. A second worker serves the last deployment and resumes both states from what the cleaner left.
    second = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env).start()
    t = {r: settings.topic(r) for r in ("predictions", "predictions.shadow", "labeled", "deadletter")}
    out = Collector(broker.bootstrap, {t["predictions"]: 4, t["predictions.shadow"]: 4, t["labeled"]: 4,
                                       t["deadletter"]: 1})
    fresh = requests(700)
    now_ids = set(early_ids) | {r["request_id"] for r in fresh}
    try:
        alive = lambda: None if second.alive() else pytest.fail(second.log()[-3000:])  # noqa: E731
        restored = [second.wait_log(rf"restored {re.escape(fb_t)}\[{p}\]: (\d+) waiting labels, (\d+) waiting "
                                    "predictions") for p in range(4)]
        assert sum(int(m[1]) for m in restored) == EARLY and sum(int(m[2]) for m in restored) == UNLABELED
        send_requests(early + fresh)
        send_labels(scored_ids[-UNLABELED:])

        def has(r: dict[str, list[Any]], topic: str, rids: set[str]) -> bool:  # outputs are keyed by request id
            return {m.key().decode() for m in r[topic]} >= rids

        got = out.until(lambda r: has(r, t["predictions"], now_ids) and has(r, t["predictions.shadow"], now_ids)
                        and has(r, t["labeled"], set(early_ids) | set(scored_ids[-UNLABELED:])),
                        timeout_s=90, check=alive)
        second.wait_log(rf"resumed drift state of fraud after window {stopped_at}\b", timeout_s=60)
        metrics = second.metrics()
    finally:
        out.close()
        assert second.stop() == 0, second.log()[-3000:]

    def decoded(topic: str) -> list[dict[str, Any]]:
        return [decode(catalog, m.value())[1] for m in got[topic]]

    served = {(p["model_version"], p["variant"]) for p in decoded(t["predictions"]) if p["request_id"] in now_ids}
    shadowed = {(p["model_version"], p["variant"]) for p in decoded(t["predictions.shadow"])}
    assert served == {("2", "champion")}, served
    assert shadowed == {("3", "shadow")}, shadowed
    joined = {(j["request_id"], j["model_version"], j["variant"]) for j in decoded(t["labeled"])}
    assert {(rid, "2", "champion") for rid in early_ids} <= joined  # the restored labels met their predictions
    assert {(rid, "1", "champion") for rid in scored_ids[-UNLABELED:]} <= joined  # restored v1 predictions
    assert not got[t["deadletter"]], [dict(m.headers() or []) for m in got[t["deadletter"]]]
    assert counter(metrics, "driftline_labels_total", model="-", outcome="duplicate") == 0

