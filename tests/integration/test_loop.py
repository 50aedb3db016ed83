"""The loop on the embedded broker: concept drift → alert → retrain → challenger in shadow → promoted (or rejected)."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from driftline.detectors.compare import log_losses
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode, encode_many
from driftline.streams.core.events import millis
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import EXAMPLE_MODELS, REPO_ROOT, load_settings
from tests.helpers import Collector, WorkerProcess

pytestmark = pytest.mark.kafka
V1 = '[{"name": "fraud", "version": "1"}]'
LOOP = {"feedback": "true", "feedback_ttl_s": "60", "quality_window_labels": "300", "trainer_min_labels": "1500",
        "trainer_shadow_labels": "800", "trainer_wait_s": "150", "trainer_shadow_wait_s": "150", "models": V1}


class Traffic:
    """Requests at ``rate``/s; each request's label follows ~1 s later, under the current label rule."""

    def __init__(self, bootstrap: str, settings, catalog: SchemaCatalog, generator, rate: int = 300) -> None:  # type: ignore[no-untyped-def]
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"})
        self.settings, self.generator, self.rate = settings, generator, rate
        self.card = catalog.latest("driftline.examples.CardTransaction")
        self.feedback = catalog.latest("driftline.Feedback")
        self.rule = 1
        self.switched_at: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def switch_rule(self) -> None:
        self.switched_at = int(time.time() * 1000)
        self.rule = 2

    def _run(self) -> None:
        rng = np.random.default_rng(17)
        due: collections.deque = collections.deque()
        while not self.stop.is_set():
            tick = time.monotonic()
            recs, labels = self.generator.generate(self.rate // 10, rng, start_ms=int(time.time() * 1000), step_ms=0,
                                                   drift=self.generator.Drift(label_rule=self.rule))
            recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
            for r, v in zip(recs, encode_many(self.card, recs), strict=True):
                self.producer.produce(self.settings.topic("requests"), v, r["card_id"].encode())
            due.append((tick + 1.0, [r["request_id"] for r in recs], labels))
            while due and due[0][0] <= time.monotonic():
                _, ids, ys = due.popleft()
                now = int(time.time() * 1000)
                for rid, y in zip(ids, ys.tolist(), strict=True):
                    rec = {"request_id": rid, "label": "fraud" if y else "legit", "target": None, "event_time": now}
                    self.producer.produce(self.settings.topic("feedback"), encode(self.feedback, rec), rid.encode())
            self.producer.poll(0)
            while time.monotonic() < tick + 0.1:
                self.producer.poll(0.01)
        self.producer.flush(30)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def start_trainer(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "trainer.log"
    proc = subprocess.Popen([sys.executable, "-m", "driftline.streams.cli", "trainer"], env=env, cwd=REPO_ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stages_of(catalog: SchemaCatalog, messages: list) -> list[tuple[str, str, str | None]]:
    return [(r["id"], r["stage"], r.get("candidate_version")) for r in
            (decode(catalog, m.value())[1] for m in messages)]


@pytest.fixture
def loop_env(broker: Broker, namespace: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    models = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "fraud", models / "fraud")
    settings = load_settings(broker=broker.bootstrap, namespace=namespace, model_dir=models)
    ensure_topics(settings)
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, model_dir=str(models), **LOOP).start()
    trainer, trainer_log = start_trainer(tmp_path, {**worker.env, "DRIFTLINE_WEB_PORT": "0"})
    yield settings, worker, trainer, trainer_log
    trainer.terminate()
    trainer.wait(30)
    worker.stop()


def test_concept_drift_to_a_promoted_challenger(loop_env, broker: Broker, catalog: SchemaCatalog,  # type: ignore[no-untyped-def]
                                                generator) -> None:
    settings, worker, trainer, trainer_log = loop_env
    t = {n: settings.topic(n) for n in ("alerts", "retrain", "predictions")}
    collector = Collector(broker.bootstrap, {t["alerts"]: 1, t["retrain"]: 1, t["predictions"]: 4})

    def alive() -> None:
        if not worker.alive():
            pytest.fail(worker.log()[-3000:])
        if trainer.poll() is not None:
            pytest.fail(trainer_log.read_text()[-3000:])

    try:
        with Traffic(broker.bootstrap, settings, catalog, generator) as traffic:
            collector.until(lambda r: len(r[t["predictions"]]) >= 2000, timeout_s=90, check=alive)
            traffic.switch_rule()
            got = collector.until(lambda r: any(s == "promoted" or s == "rejected" for _, s, _ in
                                                stages_of(catalog, r[t["retrain"]])), timeout_s=240, check=alive)
            promoted_at = time.monotonic()
            collector.until(lambda r: time.monotonic() > promoted_at + 3, timeout_s=30)
    finally:
        collector.close()
    alerts = [decode(catalog, m.value())[1] for m in got[t["alerts"]]]
    concept = [a for a in alerts if a["kind"] == "concept_drift"]
    assert traffic.switched_at is not None
    assert concept and all(millis(a["created_at"]) > traffic.switched_at for a in concept)  # none before the change
    events = stages_of(catalog, got[t["retrain"]])
    rid = next(i for i, s, _ in events if s == "requested")
    assert [s for i, s, _ in events if i == rid] == ["requested", "training", "registered", "shadow", "promoted"], \
        trainer_log.read_text()[-3000:]
    assert {c for i, s, c in events if i == rid and s in ("registered", "shadow", "promoted")} == {"2"}
    assert (Path(settings.model_dir) / "fraud" / "2" / "profile.json").is_file()

    # On the post-drift requests both versions scored, the promoted one is better: log loss and accuracy.
    labeled = [decode(catalog, m.value())[1] for m in iter_topic(settings.confluent(), settings.topic("labeled"))]
    v1 = {r["request_id"]: r for r in labeled if r["model_version"] == "1" and r["variant"] == "champion"}
    v2 = {r["request_id"]: r for r in labeled if r["model_version"] == "2" and r["variant"] == "shadow"}
    both = sorted(v1.keys() & v2.keys())
    assert len(both) >= 800
    y = np.array([v1[k]["label"] == "fraud" for k in both])
    s1, s2 = np.array([v1[k]["score"] for k in both]), np.array([v2[k]["score"] for k in both])
    assert log_losses(y, s2).mean() < log_losses(y, s1).mean()
    assert ((s2 >= 0.5) == y).mean() > ((s1 >= 0.5) == y).mean()
    # And v2 now serves the consumers.
    preds = [decode(catalog, m.value())[1] for m in got[t["predictions"]][-200:]]
    assert {p["model_version"] for p in preds[-50:]} == {"2"}


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)  # the trainer's decision; the loop above runs on both
def test_a_challenger_that_is_not_better_is_rejected(loop_env, broker: Broker, catalog: SchemaCatalog,  # type: ignore[no-untyped-def]
                                                     generator) -> None:
    settings, worker, trainer, trainer_log = loop_env
    t = {n: settings.topic(n) for n in ("retrain", "predictions")}
    collector = Collector(broker.bootstrap, {t["retrain"]: 1, t["predictions"]: 4})
    try:
        with Traffic(broker.bootstrap, settings, catalog, generator):
            collector.until(lambda r: len(r[t["predictions"]]) >= 1000, timeout_s=90)
            now = int(time.time() * 1000)  # an operator asks for a retrain, but the concept did not move
            request = {"id": "manual-1", "model": "fraud", "model_version": "1", "stage": "requested",
                       "reason": "scheduled retrain", "alert_ids": [], "data_start": now, "data_end": now,
                       "requested_at": now, "candidate_version": None}
            p = Producer({"bootstrap.servers": broker.bootstrap})
            p.produce(t["retrain"], encode(catalog.latest("driftline.RetrainRequest"), request), b"fraud")
            assert p.flush(10) == 0
            got = collector.until(lambda r: any(s in ("promoted", "rejected") for _, s, _ in
                                                stages_of(catalog, r[t["retrain"]])), timeout_s=240)
    finally:
        collector.close()
    events = stages_of(catalog, got[t["retrain"]])
    assert [s for i, s, _ in events if i == "manual-1"] == ["requested", "training", "registered", "shadow",
                                                            "rejected"], trainer_log.read_text()[-3000:]
    reason = [decode(catalog, m.value())[1]["reason"] for m in got[t["retrain"]]][-1]
    assert "not better" in reason
