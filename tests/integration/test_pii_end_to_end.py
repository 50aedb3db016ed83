"""Personal values never leave driftline in clear: every topic, the worker's log, its pages and the report.

A model whose manifest marks the card (the entity key), the country (a
request field the model does not read) and three of its features personal
serves valid and invalid requests with labels, feedback on and drift in a
personal feature, on the embedded broker (the paths are the broker's
either way). Then every byte driftline wrote is searched for the clear
values: the cards and countries as text, the amounts as Avro doubles and
the feature rows as float32, each amount's repr in logs and pages. The
requests topic is the producer's own and holds them all: it is the
positive control that the search finds what it looks for.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode_many
from driftline.schemas.pii import pseudonym
from driftline.streams.core.sealing import Opener
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import EXAMPLE_MODELS, load_settings
from driftline.streams.trainer.service import LabeledRecord, decode_labeled
from tests.helpers import Collector, WorkerProcess, send_labels

pytestmark = pytest.mark.kafka

KEY = "pii-test-key-0123456789abcdef"
TOKEN = "pii-test-web-token"
PERSONAL = ["card_id", "country", "amount", "merchant_risk", "merchant_category"]
N = 4000
CHUNK = 250
SHOP = "Dr. Jane Roe's shop"


def registry(target: Path) -> Path:
    """The example model, its manifest listing ``PERSONAL``."""
    shutil.copytree(EXAMPLE_MODELS / "fraud", target / "fraud")
    manifest_file = target / "fraud" / "1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    # country is personal here, and segments on personal fields are refused at start: no segments
    manifest_file.write_text(json.dumps({**manifest, "personal": PERSONAL, "segments": []}))
    return target


def topic_bytes(conf: dict, topics: list[str]) -> dict[str, bytes]:
    """Every key, value and header of each topic, concatenated per topic."""
    out = {}
    for topic in topics:
        parts = []
        for m in iter_topic(conf, topic):
            parts += [m.key() or b"", m.value() or b""]
            parts += [k.encode() + (v or b"") for k, v in m.headers() or []]
        out[topic] = b"\n".join(parts)
    return out


@pytest.mark.parametrize("broker", ["tansu"], indirect=True)
def test_no_personal_value_leaves_in_clear(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    models = registry(tmp_path / "models")
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, model_dir=str(models), feedback="true",
                           feedback_ttl_s="60", pii_key=KEY, web_token=TOKEN, log_format="json",
                           window_s="2", window_grace_s="1", options=("--log-level", "debug")).start()
    card = catalog.latest("driftline.examples.CardTransaction")
    rng = np.random.default_rng(20261202)
    recs, labels = generator.generate(N, rng, start_ms=int(time.time() * 1000), step_ms=0,
                                      drift=generator.Drift(shift={"amount": 1.5}))
    recs = [{**r, "ip_risk": r["ip_risk"] or 0.1, "card_id": f"CARD-SECRET-{i:05d}",
             "country": f"Country-SECRET-{i:05d}"} for i, r in enumerate(recs)]
    bad = [{**recs[0], "request_id": "bad-amount", "amount": -98765.4321},
           {**recs[1], "request_id": "bad-shop", "merchant_category": SHOP}]
    t = {n: settings.topic(n) for n in ("predictions", "labeled", "deadletter", "alerts")}
    collector = Collector(broker.bootstrap, {t["predictions"]: 4, t["labeled"]: 4, t["deadletter"]: 1,
                                             t["alerts"]: 1})
    alive = lambda: None if worker.alive() else pytest.fail(worker.log()[-3000:])  # noqa: E731
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "partitioner": "murmur2_random"})
    fb = catalog.latest("driftline.Feedback")
    try:
        # a drifted personal feature, offered over several 2-second windows so the drift agent alerts on it
        for start in range(0, N, CHUNK):
            tick = time.monotonic()
            chunk = recs[start:start + CHUNK]
            for r in chunk:  # stamped when sent: windows follow the requests' event time
                r["event_time"] = int(time.time() * 1000)
            for r, v in zip(chunk, encode_many(card, chunk), strict=True):
                producer.produce(settings.topic("requests"), v, r["card_id"].encode())
            if start == 0:  # the worker answers before the rest is offered, so every window is scored live
                producer.flush(30)
                collector.until(lambda r: len(r[t["predictions"]]) >= CHUNK, timeout_s=60, check=alive)
            while time.monotonic() < tick + 0.5:  # pace the load: a chunk every half second
                producer.poll(0.01)
        for r, v in zip(bad, encode_many(card, bad), strict=True):
            producer.produce(settings.topic("requests"), v, r["card_id"].encode())
        send_labels(producer, settings.topic("feedback"), fb, [r["request_id"] for r in recs], labels.tolist())
        producer.flush(30)
        got = collector.until(lambda r: len(r[t["labeled"]]) >= N and len(r[t["deadletter"]]) >= 2
                              and any(decode(catalog, m.value())[1]["feature"] == "amount" for m in r[t["alerts"]]),
                              timeout_s=120, check=alive)
        pages = {path: worker.page(path) for path in ("/", "/api/recent", "/metrics")}
    finally:
        collector.close()
        worker.stop()
    log = worker.log()

    # The report of the period and what `tail` prints of predictions and labeled events.
    from driftline.streams.cli.main import main as cli

    for name, value in (("NAMESPACE", namespace), ("MODEL_DIR", str(models)), ("BROKER", broker.bootstrap)):
        monkeypatch.setenv(f"DRIFTLINE_{name}", value)
    assert cli(["report", "--model", "fraud", "--window", "10m", "--out-dir", str(tmp_path)]) == 0
    pages["report"] = (tmp_path / "driftline-report-fraud.html").read_bytes()
    capsys.readouterr()
    for topic, n in ((t["predictions"], 5), (t["labeled"], 5), (t["deadletter"], 2)):
        assert cli(["tail", topic, "--max", str(n), "--from-beginning"]) == 0
    pages["tail"] = capsys.readouterr().out.encode()

    topics = sorted(n for n in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
                    if n.startswith(f"{namespace}."))
    assert {settings.topic(n) for n in ("scored", "labeled", "sketches", "drift-state")} <= set(topics)
    written = topic_bytes(settings.confluent(), topics)

    texts = [r["card_id"].encode() for r in recs] + [r["country"].encode() for r in recs] + [SHOP.encode()]
    doubles = [np.float64(r["amount"]).tobytes() for r in recs]
    rows = [np.array([r["amount"], r["merchant_risk"]], dtype="<f4").tobytes() for r in recs]  # adjacent columns

    amounts = [repr(r["amount"]) for r in recs] + ["98765.4321"]

    def leaks(blob: bytes) -> list[str]:
        found = [s.decode() for s in texts if s in blob] + [a for a in amounts if a.encode() in blob]
        found += [f"amount {r['amount']!r} as a double" for r, d in zip(recs, doubles, strict=True) if d in blob]
        found += [f"row of {r['request_id']} as float32" for r, x in zip(recs, rows, strict=True) if x in blob]
        return found

    requests = written.pop(settings.topic("requests"))
    # the control: what producers sent holds every card, country and amount (Avro doubles) and the shop; the
    # float32 rows exist only where driftline made them (the labeled rows below open to exactly those)
    assert len(leaks(requests)) == 3 * N + 1
    for topic, blob in written.items():
        assert not leaks(blob), f"{topic}: {leaks(blob)[:5]}"
    for where, blob in {"the worker's log": log.encode(), **pages}.items():
        text = blob.decode(errors="replace")
        found = [s.decode() for s in texts if s.decode() in text] + [a for a in amounts if a in text]
        assert not found, f"{where}: {found[:5]}"
    assert written[t["deadletter"]].count(b"redacted: card_id,amount,merchant_risk,merchant_category,country") == 2

    # Not lost either: predictions carry each card's pseudonym; the trainer, with the key, opens every row.
    by_id = {r["request_id"]: r for r in recs}
    preds = [decode(catalog, m.value())[1] for m in got[t["predictions"]]]
    assert all(p["entity_key"] == pseudonym(KEY.encode(), by_id[p["request_id"]]["card_id"]) for p in preds)
    opened = [decode_labeled(catalog, m.value(), Opener(KEY.encode())) for m in got[t["labeled"]]]
    assert all(isinstance(o, LabeledRecord) for o in opened)
    for o in opened:
        assert isinstance(o, LabeledRecord)
        r = by_id[o.request_id]
        assert np.frombuffer(o.features, dtype="<f4")[:2].tolist() == \
            np.array([r["amount"], r["merchant_risk"]], dtype="<f4").tolist()
    # The drift alert on the personal feature names its bins by number.
    amount_alerts = [decode(catalog, m.value())[1] for m in got[t["alerts"]]]
    amount_alerts = [a for a in amount_alerts if a["feature"] == "amount"]
    assert amount_alerts and all(b["bin"].startswith("bin ") for a in amount_alerts for b in a["top_bins"])
