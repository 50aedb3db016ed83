"""Model rollout on the embedded broker: hot swap, canary, shadow and rollback under load; refusals."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from driftline.inference.deployment import Deployment, key_buckets
from driftline.inference.registry import write_version
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode_many
from driftline.streams.cli.main import main as cli
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import EXAMPLE_MODELS, load_settings
from tests.helpers import Collector, WorkerProcess
from tests.unit.test_model import register_warmup_failing

pytestmark = pytest.mark.kafka
CANARY_FRACTION = 0.3
V1 = '[{"name": "fraud", "version": "1"}]'


@pytest.fixture
def registry(tmp_path: Path, generator, rng) -> Path:  # type: ignore[no-untyped-def]
    """fraud v1 (the example) plus v2 and v3 registered through the CLI from the same ONNX file."""
    root = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "fraud", root / "fraud")
    recs, _ = generator.generate(2000, rng)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    onnx = str(root / "fraud" / "1" / "model.onnx")
    assert cli(["model", "register", onnx, "--name", "fraud", "--version", "2", "--data", str(data),
                "--model-dir", str(root)]) == 0
    assert cli(["model", "register", onnx, "--name", "fraud", "--version", "3", "--model-dir", str(root)]) == 0
    return root


class Load:
    """Offers requests with unique ids from a thread until stopped; remembers every id sent."""

    def __init__(self, bootstrap: str, topic: str, catalog: SchemaCatalog, generator, rate: int) -> None:  # type: ignore[no-untyped-def]
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic, self.generator, self.rate = topic, generator, rate
        self.schema = catalog.latest("driftline.examples.CardTransaction")
        self.sent: list[str] = []  # ids the broker acknowledged
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(5)
        while not self.stop.is_set():
            tick = time.monotonic()
            recs, _ = self.generator.generate(self.rate // 10, rng, start_ms=int(time.time() * 1000), step_ms=0)
            recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
            for r, v in zip(recs, encode_many(self.schema, recs), strict=True):
                self.producer.produce(self.topic, v, r["card_id"].encode(),
                                      on_delivery=self._delivered(r["request_id"]))
            while time.monotonic() < tick + 0.1:
                self.producer.poll(0.01)
        assert self.producer.flush(30) == 0

    def _delivered(self, rid: str):  # type: ignore[no-untyped-def]
        def done(err, _msg) -> None:  # type: ignore[no-untyped-def]
            (self.failed if err is not None else self.sent).append(rid)
        return done

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive() and not self.failed, f"{len(self.failed)} requests not delivered"


def applied(worker: WorkerProcess, outcome: str = "applied") -> int:
    found = re.findall(rf'driftline_deployment_changes_total{{model="fraud",outcome="{outcome}"}} ([0-9.]+)',
                       worker.metrics())
    return int(float(found[0])) if found else 0


def wait(condition, worker: WorkerProcess, what: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert worker.alive(), worker.log()[-3000:]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s}s: {worker.log()[-2000:]}"
        time.sleep(0.1)


def test_hot_swap_canary_shadow_and_rollback_under_load(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, registry: Path, generator,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRIFTLINE_NAMESPACE", namespace)
    monkeypatch.setenv("DRIFTLINE_MODELS", V1)  # "latest" would be v3
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, model_dir=str(registry), batch_max="250",
                           models=V1).start()
    pred_t, shadow_t = settings.topic("predictions"), settings.topic("predictions.shadow")
    collector = Collector(broker.bootstrap, {pred_t: 4, shadow_t: 4})
    flags = ["--broker", broker.bootstrap, "--model-dir", str(registry)]

    def step(*command: str) -> None:
        """Run a CLI command, wait until the worker applied it, then let 1,500 more requests through it."""
        before = applied(worker)
        assert cli(["model", *command, *flags]) == 0
        wait(lambda: applied(worker) > before, worker, f"model {' '.join(command)}")
        seen = len(collector.records[pred_t])
        collector.until(lambda r: len(r[pred_t]) >= seen + 1500, timeout_s=60)

    try:
        with Load(broker.bootstrap, settings.topic("requests"), catalog, generator, rate=2000) as load:
            collector.until(lambda r: len(r[pred_t]) >= 1500, timeout_s=60,
                            check=lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:]))
            step("promote", "fraud", "2")
            step("canary", "fraud", "1", "--fraction", str(CANARY_FRACTION))
            step("shadow", "fraud", "3")
            step("canary", "fraud", "--stop")
            step("promote", "fraud", "1")  # the champion moves back; v2 goes to history
            step("rollback", "fraud")  # no experiment running: back to the previous champion, v2
        wanted = set(load.sent)
        collector.until(lambda r: len(r[pred_t]) >= len(wanted), timeout_s=90)
    finally:
        collector.close()
        assert worker.stop() == 0, worker.log()[-3000:]

    conf = settings.confluent()
    main = [(m.partition(), decode(catalog, m.value())[1]) for m in iter_topic(conf, pred_t)]
    shadow = [decode(catalog, m.value())[1] for m in iter_topic(conf, shadow_t)]
    ids = [p["request_id"] for _, p in main]
    assert len(ids) == len(set(ids)) and set(ids) == wanted  # each request exactly one consumer-facing prediction

    # In each partition the champion went 1 → 2 → 1 → 2 and the canary lived only while v2 was champion.
    by_partition: dict[int, list[dict]] = defaultdict(list)
    for part, p in main:
        by_partition[part].append(p)
    assert len(by_partition) == 4
    for preds in by_partition.values():
        champions = [p["model_version"] for p in preds if p["variant"] == "champion"]
        assert [v for i, v in enumerate(champions) if i == 0 or champions[i - 1] != v] == ["1", "2", "1", "2"]
        variants = [p["variant"] if p["variant"] == "canary" else p["model_version"] for p in preds]
        first_v2, canaries = variants.index("2"), [i for i, v in enumerate(variants) if v == "canary"]
        assert canaries and first_v2 < canaries[0]
        assert "1" not in variants[first_v2:canaries[-1]]  # no v1 champion while the canary ran
    assert {p["model_version"] for _, p in main if p["variant"] == "canary"} == {"1"}

    # While the canary ran (between a partition's first and last canary prediction), an entity went to the
    # canary exactly when its key hashes below the fraction; the share of entities is near the fraction.
    window = [p for preds in by_partition.values()
              for canaries in [[i for i, p in enumerate(preds) if p["variant"] == "canary"]]
              for p in preds[canaries[0]:canaries[-1] + 1]]
    keys = sorted({p["entity_key"] for p in window})
    buckets = dict(zip(keys, key_buckets(np.array(keys, dtype=object), salt="fraud").tolist(), strict=True))
    assert all((p["variant"] == "canary") == (buckets[p["entity_key"]] < CANARY_FRACTION) for p in window)
    share = len({p["entity_key"] for p in window if p["variant"] == "canary"}) / len(keys)
    assert abs(share - CANARY_FRACTION) < 4 * np.sqrt(CANARY_FRACTION * (1 - CANARY_FRACTION) / len(keys)), share

    # Shadow predictions: only on the shadow topic, v3, for requests that also got a served prediction.
    assert shadow and {p["variant"] for p in shadow} == {"shadow"} and {p["model_version"] for p in shadow} == {"3"}
    assert "shadow" not in {p["variant"] for _, p in main}
    assert {p["request_id"] for p in shadow} <= wanted


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)  # loading and refusing a version: broker-independent
def test_a_refused_version_leaves_the_old_one_serving_and_raises_an_alert(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, registry: Path,  # type: ignore[no-untyped-def]
    housing_dir: Path, generator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRIFTLINE_NAMESPACE", namespace)
    monkeypatch.setenv("DRIFTLINE_MODELS", V1)  # "latest" would be v3
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    fraud = json.loads((registry / "fraud" / "1" / "manifest.json").read_text())
    (registry / "fraud" / "3" / "model.onnx").write_bytes(  # changed after registration: hash mismatch
        (registry / "fraud" / "3" / "model.onnx").read_bytes() + b"\0")
    write_version(registry, (housing_dir / "model.onnx").read_bytes(), {**fraud, "version": "4"})  # wrong inputs
    write_version(registry, b"this is not an ONNX file", {**fraud, "version": "5"})  # corrupt
    register_warmup_failing(registry, "6")  # loads, but its warm-up run fails
    flags = ["--broker", broker.bootstrap, "--model-dir", str(registry)]
    for bad in ("3", "4", "5", "6"):  # the CLI refuses them before anything is written
        assert cli(["model", "promote", "fraud", bad, *flags]) != 0

    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, model_dir=str(registry), models=V1).start()
    alerts_t, pred_t = settings.topic("alerts"), settings.topic("predictions")
    collector = Collector(broker.bootstrap, {alerts_t: 1, pred_t: 4})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    try:
        with Load(broker.bootstrap, settings.topic("requests"), catalog, generator, rate=1000):
            collector.until(lambda r: len(r[pred_t]) >= 500, timeout_s=60,
                            check=lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:]))
            # What a file changed after the CLI's check, or another registry, would send: straight to the topic.
            for bad in ("3", "4", "5", "6"):
                dep = Deployment("fraud", "1").promote(bad, int(time.time() * 1000))
                producer.produce(settings.topic("models"), json.dumps(dep.to_dict()).encode(), b"fraud")
            assert producer.flush(10) == 0
            wait(lambda: applied(worker, "refused") >= 4, worker, "four refusals")
            seen = len(collector.records[pred_t])
            got = collector.until(lambda r: len(r[alerts_t]) >= 4 and len(r[pred_t]) >= seen + 1000, timeout_s=60)
            after = [decode(catalog, m.value())[1] for m in got[pred_t][seen:]]
            alerts = [decode(catalog, m.value())[1] for m in got[alerts_t]]
            assert cli(["model", "promote", "fraud", "2", *flags]) == 0  # a good version still deploys
            wait(lambda: applied(worker) >= 1, worker, "promote 2")
    finally:
        collector.close()
        assert worker.stop() == 0, worker.log()[-3000:]

    assert {p["model_version"] for p in after} == {"1"}  # the old version kept serving
    by_version = {a["model_version"]: a for a in alerts if a["kind"] == "model_load_failed"}
    assert set(by_version) == {"3", "4", "5", "6"}
    assert "sha256" in by_version["3"]["message"]
    assert "columns" in by_version["4"]["message"] or "input" in by_version["4"]["message"]
    assert "cannot load" in by_version["5"]["message"]
    assert re.search(r"warm-up run on \w+ExecutionProvider failed", by_version["6"]["message"])
    assert all(a["severity"] == "critical" for a in by_version.values())
