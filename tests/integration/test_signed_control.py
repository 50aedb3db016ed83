"""Signed deployment records: a worker with the control key serves only what someone holding it decided.

Broker-independent (the signature is the worker's check, not the broker's): the embedded broker only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from driftline.inference.deployment import Deployment
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode
from driftline.streams.core.signing import sign
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import EXAMPLE_MODELS, REPO_ROOT, load_settings
from tests.helpers import Collector, WorkerProcess

pytestmark = pytest.mark.kafka
KEY = "c0ntr0l-key-" + "9" * 20


def serving(worker: WorkerProcess) -> set[str]:
    """The versions the worker's driftline_model_info says serve fraud."""
    return set(re.findall(r'^driftline_model_info\{[^}]*model="fraud"[^}]*version="([^"]+)"', worker.metrics(),
                          re.M))


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "driftline.streams.cli", *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_a_worker_with_the_key_refuses_unsigned_and_forged_deployments_and_history_shows_them(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog
) -> None:
    models = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "fraud", models / "fraud")
    env = {"DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace, "DRIFTLINE_MODEL_DIR": str(models),
           "DRIFTLINE_CONTROL_KEY": KEY, "DRIFTLINE_CONTROL_IDENTITY": "ana@ops",
           "DRIFTLINE_MODELS": '[{"name": "fraud", "version": "1"}]'}
    onnx = str(models / "fraud" / "1" / "model.onnx")
    assert cli("model", "register", onnx, "--name", "fraud", "--version", "2", env=env).returncode == 0
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, model_dir=str(models), control_key=KEY,
                           models=[{"name": "fraud", "version": "1"}], log_format="json").start()
    alerts_t, models_t = settings.topic("alerts"), settings.topic("models")
    collector = Collector(broker.bootstrap, {alerts_t: 1})
    try:
        worker.wait_log("consuming")
        assert serving(worker) == {"1"}
        promote = {**Deployment("fraud", "1").promote("2", int(time.time() * 1000)).to_dict(),
                   "changed_by": "mallory", "reason": "trust me"}
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce(models_t, json.dumps(promote).encode(), b"fraud")  # no signature
        forged = sign(models_t, b"fraud", promote, b"w" * 32)  # another key
        producer.produce(models_t, json.dumps(forged).encode(), b"fraud")
        assert producer.flush(10) == 0

        def refusals(records: dict) -> list[dict]:  # type: ignore[type-arg]
            return [a for a in (decode(catalog, m.value())[1] for m in records[alerts_t])
                    if a["kind"] == "bad_control_record"]

        got = collector.until(lambda r: len(refusals(r)) >= 2, timeout_s=60,
                              check=lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:]))
        messages = [a["message"] for a in refusals(got)]
        assert any("unsigned_control_record" in m for m in messages), messages
        assert any("forged_control_record" in m for m in messages), messages
        assert all(a["severity"] == "critical" for a in refusals(got))
        assert serving(worker) == {"1"}  # what served before keeps serving

        done = cli("model", "promote", "fraud", "2", "--reason", "recall up 4 points", env=env)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 60
        while serving(worker) != {"2"}:
            assert worker.alive() and time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.3)

        # A replay: the promote record's own bytes, sent again after a rollback, is refused as stale.
        promoted = next(m for m in iter_topic(settings.confluent(), models_t) if b"recall up" in (m.value() or b""))
        assert cli("model", "rollback", "fraud", "--reason", "back to v1", env=env).returncode == 0
        deadline = time.monotonic() + 60
        while serving(worker) != {"1"}:
            assert worker.alive() and time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.3)
        producer.produce(models_t, promoted.value(), b"fraud")
        assert producer.flush(10) == 0
        got = collector.until(lambda r: len(refusals(r)) >= 3, timeout_s=60)
        assert any("stale_control_record" in a["message"] for a in refusals(got))
        assert serving(worker) == {"1"}
        # Without the key, a change would be refused by the workers: the CLI says so instead of writing it.
        no_key = {k: v for k, v in env.items() if k != "DRIFTLINE_CONTROL_KEY"}
        refused = cli("model", "promote", "fraud", "2", env=no_key)
        assert refused.returncode == 2 and "holds signed deployment records" in refused.stderr, refused.stderr

        history = cli("model", "history", "fraud", "--json", env=env)
        assert history.returncode == 0, history.stderr
        rows = [json.loads(line) for line in history.stdout.splitlines()]
        assert [r["signature"] for r in rows] == ["unsigned_control_record", "forged_control_record", "valid",
                                                  "valid", "stale_control_record"]
        assert rows[2]["by"] == "ana@ops" and rows[2]["reason"] == "recall up 4 points"
        assert "champion v2" in rows[2]["serves"] and "champion v1" in rows[3]["serves"], rows
        unchecked = cli("model", "history", "fraud", "--json", env=no_key)
        assert [json.loads(line)["signature"] for line in unchecked.stdout.splitlines()] == ["not checked"] * 5
    finally:
        collector.close()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert KEY not in worker.log()
    # The audit trail in the worker's JSON log: every line an object; who changed what serves, and the refusals.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    events = [ln for ln in lines if "event" in ln]
    applied = [e for e in events if e["event"] == "deployment_applied"]
    assert [{k: a[k] for k in ("model", "version", "actor", "reason")} for a in applied[-2:]] == [
        {"model": "fraud", "version": "2", "actor": "ana@ops", "reason": "recall up 4 points"},
        {"model": "fraud", "version": "1", "actor": "ana@ops", "reason": "back to v1"}]
    assert sorted(e["reason"] for e in events if e["event"] == "control_record_refused") == [
        "forged_control_record", "stale_control_record", "unsigned_control_record"]
    assert {"worker_started", "worker_stopping"} <= {e["event"] for e in events}
