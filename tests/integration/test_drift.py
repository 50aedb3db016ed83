"""Drift end to end on the embedded broker: calm traffic, then drift on two features."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode_many
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics, ensure_topics
from driftline.streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess

pytestmark = pytest.mark.kafka
DRIFTED = {"amount", "distance_from_last_km"}


def test_alerts_only_after_drift_only_on_drifted_features_and_a_retrain(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
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
    # Which drift matters: each data-drift alert ranks its feature by the estimated effect on the score.
    for a in alerts:
        if a["kind"] == "data_drift":
            assert a["impact"] is not None and a["impact"] >= 0 and 1 <= a["impact_rank"] <= a["drifted_features"]
            assert f"rank {a['impact_rank']} of {a['drifted_features']} drifted features by effect on the score" \
                in a["message"]
        else:
            assert a["impact_rank"] is None

    # The drift report of the period: one self-contained page with every alert and the drifted features flagged.
    from html import escape

    from driftline.streams.cli.main import main as cli

    monkeypatch.setenv("DRIFTLINE_NAMESPACE", namespace)
    assert cli(["report", "--model", "fraud", "--window", "10m", "--out-dir", str(tmp_path),
                "--broker", broker.bootstrap]) == 0
    page = (tmp_path / "driftline-report-fraud.html").read_text()
    assert "<script" not in page and "src=" not in page and "http" not in page.split("</style>")[1]
    assert all(escape(a["message"]) in page for a in alerts)
    assert "<h2>Which drift matters</h2>" in page
    # The bias audit of the same windows: the example manifest segments by country and channel.
    assert all(f"<h3>{name} <span class=dim>(version 1)</span></h3>" in page.split("<h2>Bias audit</h2>")[1]
               for name in ("country", "channel"))
    for feature in DRIFTED:
        section = page.split(f'<h3 id="col-{feature}">')[1].split("<h3")[0]
        assert "<tr class=flag><td>chi2</td>" in section and "<svg" in section
    flagged = dict(re.findall(r"<tr class=flag><td>([a-z_0-9]+)</td><td>(?:ks|chi2)</td><td class=n>(\d+)", page))
    assert DRIFTED <= set(flagged) and all(int(flagged[f]) >= 2 for f in DRIFTED)


def test_a_restarted_worker_resumes_the_drift_state(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    import json

    from driftline.streams.kafka.topics import latest_by_key
    from tests.helpers import produce

    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    schema = catalog.latest("driftline.examples.CardTransaction")
    state_t = settings.topic("drift-state")

    def send(n: int) -> None:
        recs, _ = generator.generate(n, rng)
        recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
        produce(broker.bootstrap, settings.topic("requests"),
                [(r["card_id"].encode(), v) for r, v in zip(recs, encode_many(schema, recs), strict=True)])

    def windows_done() -> int:
        state = latest_by_key(settings.confluent(), state_t).get(b"fraud")
        return 0 if state is None else json.loads(state)["policy"]["window_index"]

    def wait_windows(worker: WorkerProcess, at_least: int) -> int:
        deadline = time.monotonic() + 90
        while (done := windows_done()) < at_least:
            assert worker.alive(), worker.log()[-3000:]
            assert time.monotonic() < deadline, f"only {done} windows closed; {worker.log()[-3000:]}"
            time.sleep(0.2)
        return done

    env = {"window_events": "1000", "window_grace_s": "0", "batch_max": "250"}
    first = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env).start()
    send(6000)
    wait_windows(first, 4)
    first.kill()
    stopped_at = windows_done()  # what the state topic holds once the first worker is gone

    second = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env).start()
    try:
        send(3000)
        final = wait_windows(second, stopped_at + 1)
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    assert f"resumed drift state of fraud after window {stopped_at}" in second.log()
    assert final > stopped_at
