from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas.catalog import SchemaCatalog, schema_id
from driftline.schemas.codec import HEADER, BatchDecoder, BatchEncoder, decode, encode, encode_many, frame
from driftline.schemas.columnar import IMPLEMENTATIONS

CARD = "driftline.examples.CardTransaction"

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
int32 = st.integers(-(2**31), 2**31 - 1)
text = st.text(max_size=30)
card_v2 = st.fixed_dictionaries({
    "request_id": text, "event_time": st.integers(0, 4_102_444_800_000), "card_id": text,
    "amount": finite, "merchant_risk": finite, "distance_from_home_km": finite,
    "distance_from_last_km": finite, "ratio_to_median_amount": finite, "hour_of_day": int32,
    "tx_count_1h": int32, "tx_count_24h": int32, "account_age_days": int32, "velocity_score": finite,
    "avg_amount_7d": st.none() | finite, "device_trust": st.none() | finite,
    "ip_risk": st.none() | finite, "prior_chargebacks": st.none() | int32,
    "merchant_category": text, "channel": text, "country": text,
})


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@settings(max_examples=100, deadline=None)
@given(st.lists(card_v2, min_size=1, max_size=20))
def test_batch_round_trip(catalog: SchemaCatalog, impl: str, records: list[dict]) -> None:
    schema = catalog.latest(CARD)
    values = encode_many(schema, records)
    out = BatchDecoder(catalog, schema, max_bytes=1 << 20, implementation=impl).decode(values)
    assert out.failures == []
    assert out.records == records
    assert out.indices.tolist() == list(range(len(records)))
    assert set(out.schema_ids.tolist()) == {schema.id}


@settings(max_examples=100, deadline=None)
@given(card_v2)
def test_single_encode_matches_batch_encode_and_framing(catalog: SchemaCatalog, record: dict) -> None:
    schema = catalog.latest(CARD)
    one = encode(schema, record, fast=True)
    assert one == encode_many(schema, [record])[0]
    magic, sid = HEADER.unpack_from(one)
    assert (magic, sid) == (0, schema.id)
    assert decode(catalog, one)[1]["request_id"] == record["request_id"]


def test_frame_is_confluent_header(catalog: SchemaCatalog) -> None:
    assert frame(0x01020304, b"body") == b"\x00\x01\x02\x03\x04body"


def test_ids_are_stable_and_distinct(catalog: SchemaCatalog) -> None:
    ids = [s.id for s in catalog]
    assert len(ids) == len(set(ids))
    v1 = catalog.get(CARD, 1)
    assert schema_id(dict(v1.raw)) == v1.id
    assert all(0 <= i < 2**31 for i in ids)


def _good(catalog: SchemaCatalog, generator, rng) -> bytes:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(1, rng)
    return encode(catalog.latest(CARD), records[0])


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda good, c: b"", "empty"),
        (lambda good, c: None, "empty"),
        (lambda good, c: b"\x01" + good[1:], "bad_magic"),
        (lambda good, c: b"\x00\x00", "bad_magic"),
        (lambda good, c: b"\x00" + struct.pack(">I", 12345) + good[5:], "unknown_schema"),
        (lambda good, c: good[:-9], "malformed_avro"),
        (lambda good, c: good + b"\x00\x00", "malformed_avro"),
        (lambda good, c: good + b"x" * 5000, "too_large"),
    ],
)
def test_decode_failures_keep_position_and_reason(
    catalog, generator, rng, mutate, reason  # type: ignore[no-untyped-def]
) -> None:
    schema = catalog.latest(CARD)
    good = _good(catalog, generator, rng)
    bad = mutate(good, catalog)
    out = BatchDecoder(catalog, schema, max_bytes=4096).decode([good, bad, good])
    assert out.indices.tolist() == [0, 2]
    assert [(f.index, f.stage, f.reason) for f in out.failures] == [(1, "decode", reason)]
    assert out.failures[0].message
    # a batch of nothing else (one header shared by every record: the path without a loop per record)
    alike = BatchDecoder(catalog, schema, max_bytes=4096).decode([bad] * 200)
    assert alike.indices.tolist() == [] and [f.reason for f in alike.failures] == [reason] * 200


def test_values_that_are_not_bytes_decode_as_before(catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    """Buffers and text never crash the batch: buffers decode, text is not framed Avro (record by record)."""
    schema = catalog.latest(CARD)
    good = [_good(catalog, generator, rng) for _ in range(3)]
    decoder = BatchDecoder(catalog, schema, max_bytes=4096)
    for values in ([memoryview(bytearray(v)) for v in good], [bytearray(v) for v in good]):
        out = decoder.decode(values)  # type: ignore[arg-type]
        assert out.indices.tolist() == [0, 1, 2] and out.failures == []
    text = decoder.decode(["x" * 20] * 3)  # type: ignore[list-item]
    assert [f.reason for f in text.failures] == ["bad_magic"] * 3


def test_record_of_another_schema_is_incompatible(catalog: SchemaCatalog) -> None:
    alert_schema = catalog.latest("driftline.RetrainRequest")
    value = encode(alert_schema, {
        "id": "r1", "model": "m", "model_version": "1", "stage": "requested", "reason": "x",
        "alert_ids": [], "data_start": 0, "data_end": 1, "requested_at": 2,
    }, fast=True)
    out = BatchDecoder(catalog, catalog.latest(CARD), max_bytes=4096).decode([value])
    assert out.records == []
    assert out.failures[0].reason == "incompatible_schema"
    assert "RetrainRequest" in out.failures[0].message


def test_random_bytes_never_raise(catalog: SchemaCatalog, rng) -> None:  # type: ignore[no-untyped-def]
    values = [rng.bytes(int(n)) for n in rng.integers(0, 300, 500)]
    # A valid header with a known id followed by garbage, too.
    sid = catalog.latest(CARD).id
    values += [b"\x00" + sid.to_bytes(4, "big") + rng.bytes(int(n)) for n in rng.integers(0, 300, 500)]
    out = BatchDecoder(catalog, catalog.latest(CARD), max_bytes=4096).decode(values)
    assert len(out.records) + len(out.failures) == len(values)
    assert {f.stage for f in out.failures} == {"decode"}


def test_writer_bytes_equal_plain_fastavro(catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    schema = catalog.latest(CARD)
    records, _ = generator.generate(3, rng)
    for rec, value in zip(records, encode_many(schema, records), strict=True):
        buf = io.BytesIO()
        schemaless_writer(buf, schema.parsed, {**rec})
        assert value[5:] == buf.getvalue()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_columnar_and_fastavro_paths_agree(catalog, generator, rng, impl) -> None:  # type: ignore[no-untyped-def]
    """Small batches go through fastavro (numpy codec), big ones through the columnar codec: same answers."""
    from tests.helpers import bad_corpus

    v1, v2 = catalog.get(CARD, 1), catalog.get(CARD, 2)
    records, _ = generator.generate(60, rng)
    values = [encode(v2, r) for r in records[:30]]
    values += [encode(v1, {k: v for k, v in r.items() if k != "country"}) for r in records[30:]]
    values += [v for _, v, _, _ in bad_corpus(catalog, records[0], 4096)]
    values += [values[0][:-3], values[1] + b"\x01"]
    columnar = BatchDecoder(catalog, v2, max_bytes=4096, columnar_min_rows=1, implementation=impl).decode(values)
    rowwise = BatchDecoder(catalog, v2, max_bytes=4096, columnar_min_rows=10**9).decode(values)
    assert columnar.indices.tolist() == rowwise.indices.tolist()
    assert columnar.schema_ids.tolist() == rowwise.schema_ids.tolist()
    assert repr(columnar.records) == repr(rowwise.records)  # NaN-aware: the corpus holds a NaN
    assert [(f.index, f.stage, f.reason) for f in columnar.failures] == [
        (f.index, f.stage, f.reason) for f in rowwise.failures
    ]

    pred = catalog.latest("driftline.Prediction")
    n = 5
    cols = {"request_id": [f"r{i}" for i in range(n)], "entity_key": np.array(["k"] * n, dtype=object),
            "model": "m", "model_version": "1", "variant": "champion", "score": np.linspace(0, 1, n),
            "label": ["a", None, "b", None, "c"], "schema_id": np.arange(n), "provider": "CPU",
            "event_time": np.arange(n) * 1000, "scored_at": 7}
    assert BatchEncoder(pred, columnar_min_rows=1, implementation=impl).encode(n, cols) == BatchEncoder(
        pred, columnar_min_rows=10**9).encode(n, cols)


def test_the_compiled_codec_takes_small_batches_too(catalog: SchemaCatalog) -> None:
    """It has no fixed cost per batch to win back, so no batch takes the fastavro detour."""
    schema = catalog.latest(CARD)
    expect = {"compiled": 1, "numpy": 128}
    for impl in IMPLEMENTATIONS:
        assert BatchDecoder(catalog, schema, max_bytes=4096, implementation=impl).columnar_min_rows == expect[impl]
        assert BatchEncoder(catalog.latest("driftline.Prediction"), implementation=impl).columnar_min_rows == \
            expect[impl]
