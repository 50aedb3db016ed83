"""Baseline for bench/e2e.py: the same work one event at a time, as a typical Faust agent.

Decode, validate, score a batch of one, encode and ``topic.send`` per event,
through Faust's stream and aiokafka producer. Run by the benchmark:

    DRIFTLINE_BROKER=... DRIFTLINE_NAMESPACE=... python bench/naive_worker.py worker -l info
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faust  # noqa: E402

from inference.model import OnnxModel  # noqa: E402
from inference.registry import ModelRegistry  # noqa: E402
from schemas.codec import BatchDecoder, encode  # noqa: E402
from schemas.validation import Validator  # noqa: E402
from streams.settings import load_settings  # noqa: E402
from streams.worker import build_catalog  # noqa: E402

settings = load_settings()
catalog = build_catalog(settings)
model = OnnxModel(ModelRegistry(settings.model_dir).path("fraud"), providers="cpu")
model.load()
reader = catalog.latest(model.manifest.request_subject)
decoder = BatchDecoder(catalog, reader, settings.max_message_bytes)
validator = Validator(model.manifest.profile, reader)
prediction_schema = catalog.latest("driftline.Prediction")
Path(settings.data_dir).mkdir(parents=True, exist_ok=True)

app = faust.App(
    f"{settings.namespace}-naive",
    broker=f"kafka://{settings.broker}",
    topic_disable_leader=True,
    broker_session_timeout=6,
    broker_rebalance_timeout=6,
    broker_heartbeat_interval=1,
    broker_request_timeout=30,
    datadir=str(Path(settings.data_dir) / "naive"),  # created below
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
)
requests = app.topic(settings.topic("requests"), key_type=bytes, value_type=bytes, partitions=4,
                     key_serializer="raw", value_serializer="raw")
predictions = app.topic(settings.topic("predictions"), key_type=bytes, value_type=bytes, partitions=4,
                     key_serializer="raw", value_serializer="raw")
deadletter = app.topic(settings.topic("deadletter"), key_type=bytes, value_type=bytes, partitions=1,
                     key_serializer="raw", value_serializer="raw")


@app.agent(requests)
async def score(stream: Any) -> None:
    async for key, value in stream.items():
        decoded = decoder.decode([value])
        if decoded.failures:
            await deadletter.send(key=key, value=value)
            continue
        checked = validator.validate(decoded.records)
        if checked.failures:
            await deadletter.send(key=key, value=value)
            continue
        scores = model.predict(checked.matrix)
        s = float(scores[0])
        rec = decoded.records[0]
        now = int(time.time() * 1000)
        out = encode(prediction_schema, {
            "request_id": rec["request_id"], "entity_key": rec["card_id"], "model": model.name,
            "model_version": model.version, "variant": "champion", "score": s,
            "label": model.labels(scores)[0],
            "schema_id": int(decoded.schema_ids[0]), "provider": model.active_provider or "none",
            "event_time": rec["event_time"], "scored_at": now,
        }, fast=True)
        await predictions.send(key=rec["request_id"].encode(), value=out)


if __name__ == "__main__":
    app.main()
