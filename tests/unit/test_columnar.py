"""The columnar Avro codec agrees with fastavro, byte for byte and row for row, in both implementations.

Every test runs on each implementation this install has (``IMPLEMENTATIONS``).
The compiled one must be built: ``test_compiled_codec_is_built`` fails where
it is missing, unless ``DRIFTLINE_CODEC=numpy`` says the numpy codec is meant.
"""

from __future__ import annotations

import io
import math
import os

import fastavro
import numpy as np
import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.columnar import (
    IMPLEMENTATION,
    IMPLEMENTATIONS,
    ColumnarReader,
    ColumnarWriter,
    columns_from_records,
    flat_fields,
)
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


each = pytest.mark.parametrize("impl", IMPLEMENTATIONS)


def test_compiled_codec_is_built() -> None:
    if os.environ.get("DRIFTLINE_CODEC") == "numpy":
        assert IMPLEMENTATION == "numpy"
        return
    assert IMPLEMENTATIONS == ("compiled", "numpy"), "the compiled codec is not built: pip install -e . with gcc"
    assert IMPLEMENTATION == "compiled"


@each
@settings(max_examples=150, deadline=None)
@given(st.lists(prediction, min_size=1, max_size=30))
def test_writer_is_byte_identical_to_fastavro(catalog: SchemaCatalog, impl: str, records: list[dict]) -> None:
    schema = catalog.latest("driftline.Prediction")
    fields = flat_fields(schema.raw)
    assert fields is not None
    cols = columns_from_records(records, fields)
    out = ColumnarWriter(schema.raw, b"HDR", implementation=impl).write(len(records), cols.values, cols.nulls)
    assert out == [b"HDR" + fastavro_body(schema, r) for r in records]


@each
def test_writer_takes_scalars_and_lists(catalog: SchemaCatalog, impl: str) -> None:
    schema = catalog.latest("driftline.Prediction")
    rows = {"request_id": ["a", "b"], "entity_key": ["k", "k"], "model": "m", "model_version": "1",
            "variant": "champion", "score": np.array([0.25, 1e300]), "label": [None, "yes"],
            "schema_id": np.array([7, -7]), "provider": "CPU", "event_time": [0, 2**40], "scored_at": 5}
    out = ColumnarWriter(schema.raw, b"", implementation=impl).write(2, rows)
    expect = [{k: (v[i] if isinstance(v, (list, np.ndarray)) else v) for k, v in rows.items()} for i in range(2)]
    for got, rec in zip(out, expect, strict=True):
        rec = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()}
        assert got == fastavro_body(schema, rec)


@each
@settings(max_examples=100, deadline=None)
@given(st.lists(card_v2, min_size=1, max_size=30))
def test_reader_equals_fastavro(catalog: SchemaCatalog, impl: str, records: list[dict]) -> None:
    schema = catalog.latest("driftline.examples.CardTransaction")
    bodies = [fastavro_body(schema, r) for r in records]
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths
    reader = ColumnarReader(schema.raw, schema.raw, implementation=impl)
    cols, bad, incompatible = reader.read(b"".join(bodies), starts, starts + lengths)
    assert not bad.any() and not incompatible.any()
    assert cols.to_records() == records


@each
def test_mutated_bodies_are_accepted_exactly_when_fastavro_reads_them(
    catalog: SchemaCatalog, generator, rng, impl: str  # type: ignore[no-untyped-def]
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
    reader = ColumnarReader(schema.raw, schema.raw, implementation=impl)
    cols, bad, _ = reader.read(b"".join(bodies), starts, starts + lengths)
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


@each
def test_resolution_defaults_promotions_and_nulls(catalog: SchemaCatalog, impl: str) -> None:
    writer = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "int"}, {"name": "b", "type": ["null", "long"]}, {"name": "gone", "type": "string"},
        {"name": "s", "type": "bytes"}]}
    reader = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "double"}, {"name": "b", "type": "long"}, {"name": "s", "type": "string"},
        {"name": "new", "type": ["null", "string"], "default": None},
        {"name": "k", "type": "int", "default": 7}]}
    w = fastavro.parse_schema(writer)
    rows = [{"a": 1, "b": 2, "gone": "x", "s": b"hi"}, {"a": -5, "b": None, "gone": "", "s": b""}]
    bodies = []
    for r in rows:
        buf = io.BytesIO()
        schemaless_writer(buf, w, r)
        bodies.append(buf.getvalue())
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths
    cols, bad, incompatible = ColumnarReader(writer, reader, implementation=impl).read(
        b"".join(bodies), starts, starts + lengths)
    assert bad.tolist() == [False, False]
    assert incompatible.tolist() == [False, True]  # b is null but the reader does not allow null
    assert cols.to_records()[0] == {"a": 1.0, "b": 2, "s": "hi", "new": None, "k": 7}


ALL_KINDS = {"type": "record", "name": "All", "fields": [
    {"name": "b", "type": "boolean"}, {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
    {"name": "f", "type": "float"}, {"name": "d", "type": "double"}, {"name": "s", "type": "string"},
    {"name": "y", "type": "bytes"}, {"name": "nb", "type": ["null", "boolean"]},
    {"name": "ni", "type": ["int", "null"]},
    {"name": "nf", "type": ["null", "float"]}, {"name": "nd", "type": ["double", "null"]},
    {"name": "ns", "type": ["null", "string"]}, {"name": "ny", "type": ["bytes", "null"]},
    {"name": "nl", "type": ["null", "long"]},
]}
# Every resolution the reader does: promotions, string <-> bytes, a dropped field, defaults, a null it forbids.
ALL_KINDS_RESOLVED = {"type": "record", "name": "All", "fields": [
    {"name": "b", "type": "boolean"}, {"name": "i", "type": "double"}, {"name": "l", "type": "float"},
    {"name": "f", "type": "double"}, {"name": "s", "type": "bytes"}, {"name": "y", "type": "string"},
    {"name": "nb", "type": ["null", "boolean"]}, {"name": "ni", "type": ["null", "long"]},
    {"name": "nf", "type": ["null", "double"]}, {"name": "nd", "type": ["null", "double"]},
    {"name": "ns", "type": ["null", "string"]}, {"name": "ny", "type": ["null", "string"]},
    {"name": "nl", "type": "long"}, {"name": "extra", "type": "string", "default": "x"},
    {"name": "extra_n", "type": ["null", "int"], "default": None},
]}
int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1)
floats32 = st.floats(width=32)
all_kinds = st.fixed_dictionaries({
    "b": st.booleans(), "i": int32s, "l": int64s, "f": floats32, "d": floats, "s": st.text(max_size=12),
    "y": st.binary(max_size=12), "nb": st.none() | st.booleans(), "ni": st.none() | int32s,
    "nf": st.none() | floats32, "nd": st.none() | floats, "ns": st.none() | st.text(max_size=12),
    "ny": st.none() | st.binary(max_size=12), "nl": st.none() | int64s,
})
ALL_PARSED = fastavro.parse_schema(ALL_KINDS)


def _body(record: dict) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, ALL_PARSED, record)
    return buf.getvalue()


@each
@settings(max_examples=100, deadline=None)
@given(st.lists(all_kinds, min_size=1, max_size=40))
def test_every_kind_is_written_as_fastavro_writes_it(impl: str, records: list[dict]) -> None:
    fields = flat_fields(ALL_KINDS)
    assert fields is not None
    expect = [b"H" + _body(r) for r in records]
    writer = ColumnarWriter(ALL_KINDS, b"H", implementation=impl)
    cols = columns_from_records(records, fields)
    assert writer.write(len(records), cols.values, cols.nulls) == expect
    as_lists = {f.name: [r[f.name] for r in records] for f in fields}  # nulls as None, no masks
    assert writer.write(len(records), as_lists) == expect


@pytest.mark.skipif("compiled" not in IMPLEMENTATIONS, reason="the compiled codec is not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(all_kinds, min_size=1, max_size=30), st.data())
def test_compiled_reader_agrees_with_numpy_on_damaged_bodies(records: list[dict], data: st.DataObject) -> None:
    """Truncated, extended and flipped bodies: the same malformed and incompatible rows, the same good rows."""
    bodies = []
    for r in records:
        body = bytearray(_body(r))
        for at, value in data.draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=2)):
            if body:
                body[at % len(body)] = value
        cut = data.draw(st.integers(-3, 3))
        body = body[:cut] if cut < 0 else body + bytes(data.draw(st.binary(min_size=cut, max_size=cut)))
        bodies.append(bytes(body))
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths + 3  # bodies start after a header, as in a framed batch
    buf = b"HDR" + b"".join(bodies)
    for reader in (ALL_KINDS, ALL_KINDS_RESOLVED):
        ref, ref_bad, ref_inc = ColumnarReader(ALL_KINDS, reader, implementation="numpy").read(
            buf, starts, starts + lengths)
        got, bad, inc = ColumnarReader(ALL_KINDS, reader, implementation="compiled").read(
            buf, starts, starts + lengths)
        assert bad.tolist() == ref_bad.tolist()
        assert inc.tolist() == ref_inc.tolist()
        good = np.flatnonzero(~(bad | inc))
        assert repr(got.take(good).to_records()) == repr(ref.take(good).to_records())  # NaN-aware
        for name, col in got.take(good).values.items():
            assert col.dtype == ref.values[name].dtype, name
        assert set(got.nulls) == set(ref.nulls)


def test_an_unbuilt_implementation_is_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        ColumnarWriter(ALL_KINDS, b"", implementation="rust")


@pytest.mark.skipif("compiled" not in IMPLEMENTATIONS, reason="the compiled codec is not built")
def test_compiled_codec_refuses_bounds_it_cannot_trust() -> None:
    """The C loops index without checks, so lengths and row bounds are checked once up front."""
    writer = ColumnarWriter(ALL_KINDS, b"", implementation="compiled")
    row = {"b": True, "i": 1, "l": 2, "f": 0.5, "d": 1.5, "s": "s", "y": b"y", "nb": True, "ni": 3, "nf": 1.0,
           "nd": 2.0, "ns": None, "ny": None, "nl": 4}
    for name in ("d", "s"):
        with pytest.raises(ValueError, match="values"):
            writer.write(3, {**row, name: [row[name]] * 2})
    reader = ColumnarReader(ALL_KINDS, ALL_KINDS, implementation="compiled")
    with pytest.raises(ValueError, match="not within"):
        reader.read(b"abc", np.array([0]), np.array([4]))


def test_a_scalar_none_writes_a_nullable_field_null_in_every_row() -> None:
    """The scored record's segments of a model that declares none: one None for the whole batch."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"},
                                                        {"name": "s", "type": ["null", "string"], "default": None}]}
    rows = ColumnarWriter(schema, b"").write(3, {"a": np.arange(3), "s": None})
    assert [schemaless_reader(io.BytesIO(r), schema) for r in rows] == [{"a": i, "s": None} for i in range(3)]


@each
def test_a_string_length_near_two_to_the_63_marks_its_row_not_the_batch(impl: str) -> None:
    """A length of 2^63 - 1 overflowed pos + length in the numpy reader and raised out of the batch (a crash loop)."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}, {"name": "x", "type": "long"}]}
    parsed = fastavro.parse_schema(schema)

    def body(record: dict) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    good = [body({"s": f"id-{i}", "x": i}) for i in range(200)]
    evil = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" + b"abc"  # zigzag 2^63 - 1, then three bytes
    bodies = [*good, evil]
    lengths = np.array([len(b) for b in bodies])
    starts = np.cumsum(lengths) - lengths
    cols, bad, incompatible = ColumnarReader(schema, schema, implementation=impl).read(
        b"".join(bodies), starts, starts + lengths)
    assert bad.tolist() == [False] * 200 + [True] and not incompatible.any()
    assert cols.values["s"][:3].tolist() == ["id-0", "id-1", "id-2"]


@each
def test_a_number_in_a_string_column_is_refused_not_written_as_zero_bytes(impl: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    with pytest.raises(TypeError):
        ColumnarWriter(schema, b"", implementation=impl).write(2, {"s": np.array([5, "ok"], dtype=object)})
