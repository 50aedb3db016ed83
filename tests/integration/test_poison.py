"""Poison records on the embedded broker: no record on a topic a driftline process reads may stop it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.deployment import Deployment
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode, encode_many, frame
from driftline.streams.cli.main import main as cli
from driftline.streams.core.poison import Skip
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import EXAMPLE_MODELS, Settings, load_settings
from driftline.streams.trainer.service import parse_retrain
from tests.helpers import Collector, WorkerProcess, produce, produce_refusals

pytestmark = pytest.mark.kafka
# The commands' readers skip poison the same way on any broker: the embedded one only for them
# (both passed when this was written); the worker's test runs on both.
ONE_BROKER = pytest.mark.parametrize("broker", ["tansu"], indirect=True)
Record = tuple[bytes | None, bytes | None]

# What the review found crash-looping every worker, at start and while following the control topic.
CONTROL_AT_START: list[Record] = [
    (b"fraud", b"null"), (b"fraud", b"[]"), (b"fraud", b"5"), (b"fraud", b'"x"'), (b"fraud", b"true"),
    (b"fraud", b"[" * 100_000), (b"fraud", b'{"model": "fraud", "champion": "1", "updated_at": 1e999}'),
    (b"fraud", b"\xff\xfe\xfa not UTF-8"),
]
CONTROL_WHILE_RUNNING: list[Record] = [
    (b"fraud", b"{}"), (b"ghost", json.dumps(Deployment("fraud", "1").to_dict()).encode()),
]
# Only a broker without compaction (Tansu) takes it: Apache Kafka refuses a record without a key on a compacted
# topic, and the models topic is compacted there.
KEYLESS_CONTROL: Record = (None, b"null")


def skipped(metrics_text: str) -> dict[tuple[str, str], float]:
    """driftline_records_skipped_total by (topic, reason)."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("driftline_records_skipped_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[(labels["topic"], labels["reason"])] = float(line.rsplit(" ", 1)[1])
    return out


def skipped_on(worker: WorkerProcess, topic: str) -> float:
    return sum(n for (t, _), n in skipped(worker.metrics()).items() if t == topic)


def send_requests(bootstrap: str, settings: Settings, catalog: SchemaCatalog, generator, n: int,  # type: ignore[no-untyped-def]
                  seed: int) -> set[str]:
    recs, _ = generator.generate(n, np.random.default_rng(seed), start_ms=int(time.time() * 1000), step_ms=0)
    recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), recs)
    produce(bootstrap, settings.topic("requests"), [(r["card_id"].encode(), v) for r, v in zip(recs, values,
                                                                                              strict=True)])
    return {r["request_id"] for r in recs}


def sketch_poison() -> list[Record]:
    """Garbage, wrong shapes, a far-future window and a model nobody has, on the sketches topic."""
    profile = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
    year = 365 * 86_400_000
    future = WindowSketch.empty(profile, "fraud", "1", int(time.time() * 1000) + year,
                                int(time.time() * 1000) + year + 2000, "w")
    ghost = WindowSketch.empty(profile, "ghost", "1", int(time.time() * 1000), int(time.time() * 1000) + 2000, "w")
    return [(b"fraud", b"\x00\x01garbage"), (b"fraud", b'{"model": "fraud"}'), (b"fraud", b"[" * 100_000),
            (b"fraud", b"-1e999"), (b"fraud", json.dumps(future.to_dict()).encode()),
            (b"ghost", json.dumps(ghost.to_dict()).encode())]


def test_poison_on_the_control_sketch_and_state_topics_does_not_stop_the_worker(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator,  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    parts = settings.topic_partitions()
    models_t, sketches_t, state_t = settings.topic("models"), settings.topic("sketches"), settings.topic("drift-state")
    alerts_t, preds_t = settings.topic("alerts"), settings.topic("predictions")
    produce(broker.bootstrap, models_t, CONTROL_AT_START)  # read by the worker before it scores anything
    produce(broker.bootstrap, state_t, [(b"fraud", b"[" * 100_000)])  # read when fraud's first sketch comes
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, window_s="2", window_grace_s="1").start()
    collector = Collector(broker.bootstrap, {alerts_t: parts[alerts_t], preds_t: parts[preds_t]})

    def alive() -> None:
        if not worker.alive():
            pytest.fail(worker.log()[-3000:])

    def predicted(records: dict[str, list[Any]]) -> set[str]:
        return {decode(catalog, m.value())[1]["request_id"] for m in records[preds_t]}

    def until(condition, what: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not condition():
            alive()
            assert time.monotonic() < deadline, f"{what} within {timeout_s}s: {worker.log()[-3000:]}"
            time.sleep(0.2)

    try:
        first = send_requests(broker.bootstrap, settings, catalog, generator, 300, seed=1)
        collector.until(lambda r: first <= predicted(r), timeout_s=120, check=alive)
        produce(broker.bootstrap, models_t, CONTROL_WHILE_RUNNING)
        _, refused = produce_refusals(broker.bootstrap, models_t, [KEYLESS_CONTROL])
        keyless = not refused  # whether the worker gets to see it
        assert keyless == (broker.kind == "embedded"), refused
        produce(broker.bootstrap, sketches_t, sketch_poison())
        second = send_requests(broker.bootstrap, settings, catalog, generator, 300, seed=2)
        bad_control = len(CONTROL_AT_START) + len(CONTROL_WHILE_RUNNING) + keyless

        def alerts(records: dict[str, list[Any]]) -> list[dict[str, Any]]:
            found = [decode(catalog, m.value())[1] for m in records[alerts_t]]
            return [a for a in found if a["kind"] == "bad_control_record"]

        got = collector.until(lambda r: first | second <= predicted(r) and len(alerts(r)) >= bad_control,
                              timeout_s=120, check=alive)
        until(lambda: skipped_on(worker, models_t) >= bad_control, "control records counted")
        until(lambda: skipped_on(worker, sketches_t) >= len(sketch_poison()), "sketches counted")
        until(lambda: skipped_on(worker, state_t) >= 1, "the drift state counted")
        counts = skipped(worker.metrics())
        assert worker.alive()
    finally:
        collector.close()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    raised = alerts(got)
    assert len(raised) == bad_control and all(a["severity"] == "critical" for a in raised)
    assert sorted(a["model"] for a in raised) == ["fraud"] * 9 + ["unknown"] * (1 + keyless)
    assert len({a["id"] for a in raised}) == bad_control
    assert counts[(models_t, "malformed_json")] == 2 and counts[(models_t, "invalid_deployment")] == 7
    assert counts[(models_t, "key_mismatch")] == 1 and counts.get((models_t, "no_key"), 0) == keyless
    assert counts[(sketches_t, "window_out_of_range")] == 1 and counts[(sketches_t, "unknown_model")] == 1
    assert counts[(state_t, "malformed_json")] == 1
    assert "skipped the record at" in worker.log()


RETRAIN = {"id": "r-ghost", "model": "ghost", "model_version": "1", "stage": "requested", "reason": "drift",
           "alert_ids": [], "data_start": 1_767_225_600_000, "data_end": 1_767_225_700_000,
           "requested_at": 1_767_225_700_000, "candidate_version": None}
ALERT = {"id": "a1", "model": "fraud", "model_version": "1", "kind": "data_drift", "severity": "warning",
         "feature": "amount", "statistic": "ks", "value": 0.3, "threshold": 0.1, "window_start": 1_767_225_600_000,
         "window_end": 1_767_225_700_000, "sample_size": 10, "reference_size": 10, "top_bins": [],
         "message": "amount moved", "created_at": 1_767_225_700_000}


@ONE_BROKER
def test_the_trainer_and_the_alerts_command_skip_poison(
    broker: Broker, namespace: str, catalog: SchemaCatalog, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DRIFTLINE_NAMESPACE", namespace)
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    retrain_s, alert_s = catalog.latest("driftline.RetrainRequest"), catalog.latest("driftline.Alert")
    retrain_t, alerts_t = settings.topic("retrain"), settings.topic("alerts")
    produce(broker.bootstrap, retrain_t, [
        (b"fraud", b"garbage"), (b"fraud", encode(alert_s, ALERT)),  # another schema: rec["stage"] crashed
        (b"fraud", frame(retrain_s.id, b"\x02")), (b"fraud", b"[" * 100_000),
        (b"fraud", encode(retrain_s, {**RETRAIN, "id": "r-far", "data_start": 2**62})),  # no date at all
        (b"ghost", encode(retrain_s, RETRAIN)),  # a real request for a model not served: fails as an event
    ])
    produce(broker.bootstrap, alerts_t, [(b"fraud", b"\xff\x00 not Avro"), (b"fraud", encode(alert_s, ALERT))])
    flags = ["--broker", broker.bootstrap]
    assert cli(["trainer", "--once", *flags]) == 0
    events = [e for m in iter_topic(settings.confluent(), retrain_t)
              if not isinstance(e := parse_retrain(catalog, m.value()), Skip)]
    assert [(e.id, e.stage) for e in events if e.stage != "requested"] == [("r-ghost", "failed")]
    capsys.readouterr()
    assert cli(["alerts", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("amount moved" in line for line in out)
    assert any("failed" in line and "ghost" in line for line in out)


@ONE_BROKER
def test_the_status_and_report_commands_skip_poison_and_say_how_many(
    broker: Broker, namespace: str, catalog: SchemaCatalog, tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    from driftline.streams.settings import REPO_ROOT

    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    now = int(time.time() * 1000)
    profile = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
    good = WindowSketch.empty(profile, "fraud", "1", now - 60_000, now - 50_000, "w").to_dict()
    produce(broker.bootstrap, settings.topic("sketches"), [
        *sketch_poison(),  # 4 that do not parse; a far-future window and a model not asked for are not looked at
        (b"fraud", json.dumps({**good, "columns": {}}).encode()),  # parses, does not fit the profile
        (b"fraud", json.dumps(good).encode()),
    ])
    alert_s = catalog.latest("driftline.Alert")
    produce(broker.bootstrap, settings.topic("alerts"), [
        (b"fraud", b"\xff\x00 not Avro"), (b"fraud", encode(catalog.latest("driftline.RetrainRequest"), RETRAIN)),
        (b"fraud", frame(alert_s.id, b"\x02")), (b"fraud", encode(alert_s, {**ALERT, "created_at": now - 1000})),
    ])
    env = {**os.environ, "DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "driftline.streams.cli", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    status = run("status", "--worker", "http://127.0.0.1:1")
    assert status.returncode == 0, status.stderr[-3000:]
    assert "amount moved" in status.stdout
    assert f"skipped 3 records that do not parse as alerts on {settings.topic('alerts')}" in status.stdout
    report = run("report", "--model", "fraud", "--out-dir", str(tmp_path))
    assert report.returncode == 0, report.stderr[-3000:]
    assert "skipped 8 records that do not parse" in report.stderr
    page = (tmp_path / "driftline-report-fraud.html").read_text()
    assert "Skipped 8 records" in page and "amount moved" in page and "Version 1" in page
