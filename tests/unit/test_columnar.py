"""The columnar Avro codec agrees with fastavro, byte for byte and row for row."""

from __future__ import annotations

import io
import math

import numpy as np
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.columnar import ColumnarReader, ColumnarWriter, columns_from_records, flat_fields
from tests.unit.test_codec import card_v2

floats = st.floats(width=64)  # NaN and infinities included: they are valid Avro doubles
prediction = st.fixed_dictionaries({
    "request_id": st.text(max_size=40), "entity_key": st.text(max_size=20), "model": st.text(max_size=10),
    "model_version": st.text(max_size=5), "variant": st.sampled_from(["champion", "canary", "shadow"]),
    "score": floats, "label": st.none() | st.text(max_size=8), "schema_id": st.integers(-(2**31), 2**31 - 1),
    "provider": st.text(max_size=25), "event_time": st.integers(-(2**63), 2**63 - 1),
    "scored_at": st.integers(-(2**63), 2**63 - 1),
})


def fastavro_body(schema: WireSchema, record: dict) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema.fast, record)
    return buf.getvalue()


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@settings(max_examples=150, deadline=None)
@given(st.lists(prediction, min_size=1, max_size=30))
def test_writer_is_byte_identical_to_fastavro(catalog: SchemaCatalog, records: list[dict]) -> None:
    schema = catalog.latest("driftline.Prediction")
    fields = flat_fields(schema.raw)
    assert fields is not None
    cols = columns_from_records(records, fields)
    out = ColumnarWriter(schema.raw, b"HDR").write(len(records), cols.values, cols.nulls)
    assert out == [b"HDR" + fastavro_body(schema, r) for r in records]


def test_writer_takes_scalars_and_lists(catalog: SchemaCatalog) -> None:
    schema = catalog.latest("driftline.Prediction")
    rows = {"request_id": ["a", "b"], "entity_key": ["k", "k"], "model": "m", "model_version": "1",
            "variant": "champion", "score": np.array([0.25, 1e300]), "label": [None, "yes"],
            "schema_id": np.array([7, -7]), "provider": "CPU", "event_time": [0, 2**40], "scored_at": 5}
    out = ColumnarWriter(schema.raw, b"").write(2, rows)
    expect = [{k: (v[i] if isinstance(v, (list, np.ndarray)) else v) for k, v in rows.items()} for i in range(2)]
    for got, rec in zip(out, expect, strict=True):
        rec = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()}
        assert got == fastavro_body(schema, rec)


@settings(max_examples=100, deadline=None)
@given(st.lists(card_v2, min_size=1, max_size=30))
def test_reader_equals_fastavro(catalog: SchemaCatalog, records: list[dict]) -> None:
    schema = catalog.latest("driftline.examples.CardTransaction")
    bodies = [fastavro_body(schema, r) for r in records]
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths
    cols, bad, incompatible = ColumnarReader(schema.raw, schema.raw).read(b"".join(bodies), starts, starts + lengths)
    assert not bad.any() and not incompatible.any()
    assert cols.to_records() == records


def test_mutated_bodies_are_accepted_exactly_when_fastavro_reads_them(
    catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    schema = catalog.latest("driftline.examples.CardTransaction")
    records, _ = generator.generate(300, rng)
    bodies = []
    for r in records:
        b = bytearray(fastavro_body(schema, r))
        kind = rng.integers(0, 4)
        if kind == 0 and len(b) > 1:
            del b[int(rng.integers(1, len(b))):]  # truncate
        elif kind == 1:
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))  # flip one byte
        elif kind == 2:
            b += bytes(rng.integers(0, 256, int(rng.integers(1, 4))).astype(np.uint8))  # trailing bytes
        bodies.append(bytes(b))
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths
    cols, bad, _ = ColumnarReader(schema.raw, schema.raw).read(b"".join(bodies), starts, starts + lengths)
    decoded = cols.to_records()
    accepted = rejected = 0
    for i, body in enumerate(bodies):
        buf = io.BytesIO(body)
        try:
            ref = schemaless_reader(buf, schema.fast, None)
            ok = buf.tell() == len(body)
        except Exception:  # noqa: BLE001 - any fastavro failure means "not readable"
            ok = False
        assert ok == (not bad[i]), (i, body)
        if ok:
            accepted += 1
            assert all(same(decoded[i][k], ref[k]) for k in ref), i
        else:
            rejected += 1
    assert accepted > 50 and rejected > 50  # both branches really exercised


def test_resolution_defaults_promotions_and_nulls(catalog: SchemaCatalog) -> None:
    writer = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "int"}, {"name": "b", "type": ["null", "long"]}, {"name": "gone", "type": "string"},
        {"name": "s", "type": "bytes"}]}
    reader = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "double"}, {"name": "b", "type": "long"}, {"name": "s", "type": "string"},
        {"name": "new", "type": ["null", "string"], "default": None},
        {"name": "k", "type": "int", "default": 7}]}
    import fastavro

    w = fastavro.parse_schema(writer)
    rows = [{"a": 1, "b": 2, "gone": "x", "s": b"hi"}, {"a": -5, "b": None, "gone": "", "s": b""}]
    bodies = []
    for r in rows:
        buf = io.BytesIO()
        schemaless_writer(buf, w, r)
        bodies.append(buf.getvalue())
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths
    cols, bad, incompatible = ColumnarReader(writer, reader).read(b"".join(bodies), starts, starts + lengths)
    assert bad.tolist() == [False, False]
    assert incompatible.tolist() == [False, True]  # b is null but the reader does not allow null
    assert cols.to_records()[0] == {"a": 1.0, "b": 2, "s": "hi", "new": None, "k": 7}


def test_a_scalar_none_writes_a_nullable_field_null_in_every_row() -> None:
    """The scored record's segments of a model that declares none: one None for the whole batch."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"},
                                                        {"name": "s", "type": ["null", "string"], "default": None}]}
    rows = ColumnarWriter(schema, b"").write(3, {"a": np.arange(3), "s": None})
    assert [schemaless_reader(io.BytesIO(r), schema) for r in rows] == [{"a": i, "s": None} for i in range(3)]
