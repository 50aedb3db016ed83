"""Baseline for bench/e2e.py: the same work one event at a time, as a typical Faust agent.

Decode (fastavro), validate (plain Python over the model's profile), score a
batch of one, encode and ``topic.send`` per event, through Faust's stream and
aiokafka producer: the per-event code a Faust user would write, reasonably
tuned for one event at a time. Run by the benchmark:

    DRIFTLINE_BROKER=... DRIFTLINE_NAMESPACE=... python bench/naive_worker.py worker -l info
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faust  # noqa: E402
import numpy as np  # noqa: E402
from fastavro import schemaless_reader  # noqa: E402

from driftline.inference.model import OnnxModel  # noqa: E402
from driftline.inference.registry import ModelRegistry  # noqa: E402
from driftline.schemas.codec import encode  # noqa: E402
from driftline.schemas.profile import NumericFeature  # noqa: E402
from driftline.streams.catalog import build_catalog  # noqa: E402
from driftline.streams.settings import load_settings  # noqa: E402

settings = load_settings()
catalog = build_catalog(settings)
model = OnnxModel(ModelRegistry(settings.model_dir).path("fraud"), providers="cpu")
model.load()
reader = catalog.latest(model.manifest.request_subject)
profile = model.manifest.profile
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


def features(rec: dict[str, Any]) -> list[float] | None:
    """Plain per-record validation and encoding, as one would write it for one event."""
    row: list[float] = []
    for f in profile.features:
        v = rec.get(f.name)
        if isinstance(f, NumericFeature):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                if not f.allow_missing:
                    return None
                v = f.impute
            if math.isinf(v) or not f.minimum <= v <= f.maximum:
                return None
            row.append(float(v))
        else:
            if v not in f.categories:
                return None
            if f.encoding == "onehot":
                row.extend(1.0 if v == c else 0.0 for c in f.categories)
            else:
                row.append(float(f.categories.index(v)))
    return row


@app.agent(requests)
async def score(stream: Any) -> None:
    async for key, value in stream.items():
        try:
            writer = catalog.by_id(int.from_bytes(value[1:5], "big"))
            if writer is None or value[0] != 0:
                raise ValueError("bad header")
            rec = schemaless_reader(io.BytesIO(value[5:]), writer.fast, reader.fast)
        except Exception:  # noqa: BLE001 - dead-letter whatever does not decode
            await deadletter.send(key=key, value=value)
            continue
        row = features(rec)
        if row is None:
            await deadletter.send(key=key, value=value)
            continue
        s = float(model.predict(np.array([row], dtype=np.float32))[0])
        out = encode(prediction_schema, {
            "request_id": rec["request_id"], "entity_key": rec["card_id"], "model": model.name,
            "model_version": model.version, "variant": "champion", "score": s,
            "label": "fraud" if s >= model.manifest.threshold else "legit",
            "schema_id": writer.id, "provider": model.active_provider or "none",
            "event_time": rec["event_time"], "scored_at": int(time.time() * 1000),
        }, fast=True)
        await predictions.send(key=rec["request_id"].encode(), value=out)


if __name__ == "__main__":
    app.main()
