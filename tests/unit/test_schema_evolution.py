from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir, load_schema_file
from driftline.schemas.codec import BatchDecoder, encode
from driftline.schemas.errors import SchemaError

CARD = "driftline.examples.CardTransaction"


def test_old_producer_is_read_with_the_new_schema(catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = catalog.get(CARD, 1), catalog.get(CARD, 2)
    records, _ = generator.generate(5, rng)
    old = [{k: v for k, v in r.items() if k != "country"} for r in records]
    values = [encode(v1, r) for r in old]
    out = BatchDecoder(catalog, v2, max_bytes=4096).decode(values)
    assert out.failures == []
    assert [r["country"] for r in out.records] == ["unknown"] * 5  # v2's default
    assert out.schema_ids.tolist() == [v1.id] * 5
    assert [r["amount"] for r in out.records] == [r["amount"] for r in old]


def test_new_producer_is_read_by_an_old_reader(catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = catalog.get(CARD, 1), catalog.get(CARD, 2)
    records, _ = generator.generate(2, rng)
    out = BatchDecoder(catalog, v1, max_bytes=4096).decode([encode(v2, r) for r in records])
    assert out.failures == [] and "country" not in out.records[0]


def test_incompatible_change_fails_per_record(tmp_path: Path, catalog: SchemaCatalog, generator, rng) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((builtin_schema_dir() / "card_transaction.v1.avsc").read_text())
    for f in raw["fields"]:
        if f["name"] == "amount":
            f["type"] = "string"  # double → string cannot be resolved
    (tmp_path / "card_transaction.v3.avsc").write_text(json.dumps(raw))
    v3 = load_schema_file(tmp_path / "card_transaction.v3.avsc")
    both = SchemaCatalog([*catalog, v3])
    records, _ = generator.generate(1, rng)
    bad = encode(v3, {**records[0], "amount": "12.5"})
    out = BatchDecoder(both, both.get(CARD, 2), max_bytes=4096).decode([bad])
    assert out.failures[0].reason == "incompatible_schema"


def test_catalog_refuses_bad_files(tmp_path: Path) -> None:
    (tmp_path / "x.v1.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": "a"}]}')
    with pytest.raises(SchemaError, match="not a valid Avro schema"):
        SchemaCatalog.from_dirs([tmp_path])
    with pytest.raises(SchemaError, match="does not exist"):
        SchemaCatalog.from_dirs([tmp_path / "nope"])


def test_unknown_subject_names_known_ones(catalog: SchemaCatalog) -> None:
    with pytest.raises(SchemaError, match="driftline.Prediction"):
        catalog.latest("no.such.Subject")
