"""A real worker serves a multi-input skl2onnx model registered with ``driftline model register`` (issue #15)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from driftline.inference.manifest import Manifest
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode
from driftline.streams.core.pipeline import ERROR_HEADER
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import create_topics
from driftline.streams.settings import REPO_ROOT, load_settings
from tests.byo import CARD, SPEC, export, sklearn_scores, train
from tests.helpers import Collector, WorkerProcess, produce

pytestmark = pytest.mark.kafka
# Scoring a multi-input model is the same on either broker (both passed when written): the embedded one.
ONE_BROKER = pytest.mark.parametrize("broker", ["tansu"], indirect=True)


@ONE_BROKER
def test_a_worker_scores_a_multi_input_model_end_to_end(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator  # type: ignore[no-untyped-def]
) -> None:
    train_records, labels = generator.generate(3000, np.random.default_rng(21))
    pipe = train(train_records, labels)
    (tmp_path / "model.onnx").write_bytes(export(pipe))
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({**r, "ip_risk": r["ip_risk"] or 0.1}) + "\n"
                                                  for r in train_records[:1000]))
    models = tmp_path / "models"
    registered = subprocess.run(
        [sys.executable, "-m", "driftline.streams.cli", "model", "register", str(tmp_path / "model.onnx"),
         "--name", "cards", "--version", "1", "--subject", CARD, "--spec", str(tmp_path / "spec.json"),
         "--data", str(tmp_path / "train.jsonl"), "--model-dir", str(models), "--providers", "cpu"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert registered.returncode == 0, registered.stderr
    assert "registered cards v1" in registered.stdout and "reference profile built from 1000 rows" in registered.stdout
    width = Manifest.read(ModelRegistry(models).path("cards", "1")).profile.width

    bindings = [{"name": "cards"}]
    settings = load_settings(broker=broker.bootstrap, namespace=namespace, models=bindings)
    create_topics(settings.confluent(), settings.topic_partitions())
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, models=bindings, model_dir=str(models),
                           feedback="true", window_events="300").start()
    t = {n: settings.topic(n) for n in ("predictions", "deadletter", "scored", "sketches")}
    collector = Collector(broker.bootstrap, {topic: settings.topic_partitions()[topic] for topic in t.values()})
    try:
        records, _ = generator.generate(1200, np.random.default_rng(22))
        records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]
        bad = [{**records[0], "request_id": "bad-category", "merchant_category": "crypto"},
               {**records[1], "request_id": "bad-amount", "amount": -1.0}]
        card = catalog.latest(CARD)
        produce(broker.bootstrap, settings.topic("requests"),
                [(r["card_id"].encode(), encode(card, r)) for r in records + bad])

        def alive() -> None:
            assert worker.alive(), worker.log()[-3000:]

        got = collector.until(lambda r: len(r[t["predictions"]]) >= len(records)
                              and len(r[t["deadletter"]]) >= len(bad) and len(r[t["scored"]]) >= len(records)
                              and len(r[t["sketches"]]) >= 1, timeout_s=90, check=alive)
        preds = {p["request_id"]: p for p in (decode(catalog, m.value())[1] for m in got[t["predictions"]])}
        assert set(preds) == {r["request_id"] for r in records}
        scores = np.array([preds[r["request_id"]]["score"] for r in records])
        np.testing.assert_allclose(scores, sklearn_scores(pipe, records), atol=1e-5)
        assert {p["model"] for p in preds.values()} == {"cards"} and {p["model_version"] for p in preds.values()} == {
            "1"}

        reasons = Counter(dict(m.headers())[ERROR_HEADER + "reason"] for m in got[t["deadletter"]])
        assert reasons == {b"unknown_category": 1, b"out_of_range": 1}
        # the feedback rows carry the manifest's matrix (what the trainer retrains a challenger from)
        scored = [decode(catalog, m.value())[1] for m in got[t["scored"]]]
        assert {len(s["features"]) for s in scored} == {4 * width}
        # drift windows fold the request columns of this model, against its reference profile
        sketch = json.loads(got[t["sketches"]][0].value())
        assert sketch["model"] == "cards" and set(sketch["columns"]) >= {"merchant_category", "device_trust"}
        assert worker.alive()
        assert 'driftline_requests_total{model="cards",outcome="predicted"} 1200.0' in worker.metrics()
    finally:
        collector.close()
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
