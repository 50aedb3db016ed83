"""The score path on one batch, without a broker."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from fastavro import schemaless_reader

from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import HEADER, encode
from driftline.streams.core.pipeline import ERROR_HEADER, RawMessage, ScorePipeline, ServedModel
from tests.helpers import bad_corpus, housing_records

NOW = 1_767_225_700_000
MAX = 4096


def _pipeline(catalog: SchemaCatalog, served: dict[str, OnnxModel], dlq_max: int = 1 << 20) -> ScorePipeline:
    return ScorePipeline(
        {t: ServedModel(m, catalog, max_message_bytes=MAX) for t, m in served.items()},
        catalog.latest("driftline.Prediction"),
        predictions_topic="ns.predictions", deadletter_topic="ns.deadletter",
        deadletter_max_bytes=dlq_max,
    )


def _msgs(topic: str, values: list[bytes], headers=None) -> list[RawMessage]:  # type: ignore[no-untyped-def]
    return [RawMessage(topic, 0, i, f"k{i}".encode(), v, headers, 0) for i, v in enumerate(values)]


def _decode_prediction(catalog: SchemaCatalog, value: bytes) -> dict:
    import io

    return schemaless_reader(io.BytesIO(value[HEADER.size:]), catalog.latest("driftline.Prediction").fast, None)


def test_valid_and_bad_messages(catalog: SchemaCatalog, fraud_model: OnnxModel, generator, rng) -> None:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(200, rng)
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]
    schema = catalog.latest("driftline.examples.CardTransaction")
    corpus = bad_corpus(catalog, records[0], MAX)
    values = [encode(schema, r) for r in records] + [v for _, v, _, _ in corpus]
    msgs = _msgs("ns.requests", values, headers=[("trace", b"abc")])
    out = _pipeline(catalog, {"ns.requests": fraud_model}).process(msgs, NOW)

    assert len(out.predictions) == len(records)
    preds = [_decode_prediction(catalog, p.value) for p in out.predictions]
    assert [p["request_id"] for p in preds] == [r["request_id"] for r in records]
    assert all(p.key == r["request_id"].encode() for p, r in zip(out.predictions, records, strict=True))
    served = _pipeline(catalog, {"t": fraud_model}).served["t"]
    direct = fraud_model.predict(served.validator.validate(served.decoder.decode(values).columns).matrix)
    np.testing.assert_allclose([p["score"] for p in preds], direct)
    assert {p["model"] for p in preds} == {"fraud"} and {p["variant"] for p in preds} == {"champion"}
    assert {p["schema_id"] for p in preds} == {schema.id}
    assert all(p["scored_at"] == NOW and p["provider"] == "CPUExecutionProvider" for p in preds)

    assert len(out.deadletters) == len(corpus)
    got = []
    for d in out.deadletters:
        h = dict(d.headers)
        assert h["trace"] == b"abc"  # original headers kept
        assert h[ERROR_HEADER + "topic"] == b"ns.requests"
        assert int(h[ERROR_HEADER + "offset"]) >= len(records)
        assert h[ERROR_HEADER + "exception.message"]
        assert h[ERROR_HEADER + "exception.class.name"].decode().isidentifier()  # Kafka Connect's header name
        assert ERROR_HEADER + "class.name" not in h
        assert values[int(h[ERROR_HEADER + "offset"])] == d.value  # original bytes
        got.append((h[ERROR_HEADER + "stage"].decode(), h[ERROR_HEADER + "reason"].decode()))
    assert Counter(got) == Counter((stage, reason) for _, _, stage, reason in corpus)
    (stats,) = out.stats
    assert stats.scored == len(records)


def test_second_model_of_another_shape(catalog: SchemaCatalog, fraud_model: OnnxModel,
                                       housing_model: OnnxModel, generator, rng) -> None:  # type: ignore[no-untyped-def]
    houses, _ = housing_records(50, rng)
    cards, _ = generator.generate(10, rng)
    hs = catalog.latest("driftline.tests.HouseSale")
    cs = catalog.latest("driftline.examples.CardTransaction")
    msgs = _msgs("ns.requests.housing", [encode(hs, h) for h in houses]) + _msgs(
        "ns.requests", [encode(cs, {**c, "ip_risk": 0.2}) for c in cards])
    out = _pipeline(catalog, {"ns.requests": fraud_model, "ns.requests.housing": housing_model}).process(msgs, NOW)
    preds = [_decode_prediction(catalog, p.value) for p in out.predictions]
    by_model = Counter(p["model"] for p in preds)
    assert by_model == {"housing": 50, "fraud": 10}
    house_preds = [p for p in preds if p["model"] == "housing"]
    assert all(p["label"] is None and p["score"] > 0 for p in house_preds)
    assert [p["entity_key"] for p in house_preds] == [h["house_id"] for h in houses]
    assert out.deadletters == []


def test_unrouted_topic_and_truncated_deadletter(catalog: SchemaCatalog, fraud_model: OnnxModel) -> None:
    big = b"\x00" * 9000
    out = _pipeline(catalog, {"ns.requests": fraud_model}, dlq_max=4096).process(
        _msgs("ns.requests", [big]) + _msgs("elsewhere", [b"x"]), NOW)
    reasons = sorted(dict(d.headers)[ERROR_HEADER + "reason"].decode() for d in out.deadletters)
    assert reasons == ["too_large", "unrouted_topic"]
    trunc = next(d for d in out.deadletters if len(d.value or b"") > 1)
    assert len(trunc.value or b"") < 4096
    h = dict(trunc.headers or [])
    assert h[ERROR_HEADER + "value.truncated"] == b"true" and h[ERROR_HEADER + "value.size"] == b"9000"


def test_inference_failure_dead_letters_the_batch(catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    from driftline.streams.settings import EXAMPLE_MODELS

    model = OnnxModel(EXAMPLE_MODELS / "fraud" / "1", providers="cpu")
    model.load()
    pipeline = _pipeline(catalog, {"ns.requests": model})
    model.unload()  # predict now raises ModelNotReady
    records, _ = generator.generate(3, rng)
    schema = catalog.latest("driftline.examples.CardTransaction")
    out = pipeline.process(_msgs("ns.requests", [encode(schema, {**r, "ip_risk": 0.1}) for r in records]), NOW)
    assert out.predictions == []
    assert [dict(d.headers)[ERROR_HEADER + "stage"] for d in out.deadletters] == [b"score"] * 3


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_batches(catalog: SchemaCatalog, fraud_model: OnnxModel, generator, rng, n: int) -> None:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(n, rng)
    schema = catalog.latest("driftline.examples.CardTransaction")
    out = _pipeline(catalog, {"ns.requests": fraud_model}).process(
        _msgs("ns.requests", [encode(schema, {**r, "ip_risk": 0.1}) for r in records]), NOW)
    assert len(out.predictions) == n


def test_latency_runs_from_the_record_timestamp_and_event_lag_from_event_time(
    catalog: SchemaCatalog, fraud_model: OnnxModel, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    """A producer replaying hour-old events (generator.py | driftline produce -): latency is the 200 ms since the
    records were produced, not the hour since the events; the hour is the event-time lag. A record without a
    timestamp (librdkafka reports none) is left out of the latency, not counted as zero."""
    from prometheus_client import CollectorRegistry

    from driftline.streams.metrics import Metrics

    records, _ = generator.generate(100, rng, start_ms=NOW - 3_600_000, step_ms=0)
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]
    schema = catalog.latest("driftline.examples.CardTransaction")
    msgs = [RawMessage("ns.requests", 0, i, None, encode(schema, r), None, 0 if i == 0 else NOW - 200)
            for i, r in enumerate(records)]
    out = _pipeline(catalog, {"ns.requests": fraud_model}).process(msgs, NOW)
    [stats] = out.stats
    assert len(stats.latency_s) == 99 and np.allclose(stats.latency_s, 0.2)
    assert len(stats.event_lag_s) == 100 and np.allclose(stats.event_lag_s, 3600.0)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_batch(100, out, NOW / 1000)
    get = registry.get_sample_value
    assert get("driftline_end_to_end_latency_seconds_bucket", {"model": "fraud", "le": "0.25"}) == 99
    assert get("driftline_event_time_lag_seconds_bucket", {"model": "fraud", "le": "3600.0"}) == 100
    assert get("driftline_event_time_lag_seconds_bucket", {"model": "fraud", "le": "900.0"}) == 0
