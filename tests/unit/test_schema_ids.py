"""Schema ids without a registry: a change of a default, a doc or a logical type is a new version, not a collision."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir, canonical_id, schema_id
from driftline.schemas.codec import HEADER, BatchDecoder, decode, encode
from driftline.streams.example import fraud_generator

CARD = "driftline.examples.CardTransaction"


def _v2() -> dict[str, Any]:
    return json.loads((builtin_schema_dir() / "card_transaction.v2.avsc").read_text())


def _field(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in raw["fields"] if f["name"] == name)


def _with_v3(tmp_path: Path, change) -> SchemaCatalog:  # type: ignore[no-untyped-def]
    raw = _v2()
    change(raw)
    (tmp_path / "card_transaction.v3.avsc").write_text(json.dumps(raw, indent=1))
    return SchemaCatalog.from_dirs([builtin_schema_dir(), tmp_path])


def _default(raw: dict[str, Any]) -> None:
    _field(raw, "country")["default"] = "DE"


def _doc(raw: dict[str, Any]) -> None:
    _field(raw, "amount")["doc"] = "in the card's currency"


def _logical(raw: dict[str, Any]) -> None:
    _field(raw, "event_time")["type"]["logicalType"] = "timestamp-micros"


@pytest.mark.parametrize("change", [_default, _doc, _logical], ids=["default", "doc", "logical type"])
def test_a_change_the_canonical_form_drops_is_a_new_version(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    catalog = _with_v3(tmp_path, change)
    v2, v3 = catalog.get(CARD, 2), catalog.get(CARD, 3)
    assert canonical_id(v2.raw) == canonical_id(v3.raw)  # the old scheme gave both one id: the collision
    assert v3.id != v2.id
    assert catalog.latest(CARD) is v3
    assert catalog.by_id(v2.id) is v2 and catalog.by_id(v3.id) is v3


def test_key_order_and_spacing_do_not_change_an_id() -> None:
    raw = _v2()
    shuffled = json.loads(json.dumps(dict(reversed(list(raw.items())))))
    assert schema_id(shuffled) == schema_id(raw)
    renamed = copy.deepcopy(raw)
    renamed["name"] = "CardPayment"
    assert schema_id(renamed) != schema_id(raw)


def test_records_framed_with_the_old_canonical_id_still_read(tmp_path: Path) -> None:
    """A producer on an earlier driftline framed with the canonical-form id; the worker reads its records."""
    catalog = _with_v3(tmp_path, _default)
    v2 = catalog.get(CARD, 2)
    records, _ = fraud_generator().generate(200, np.random.default_rng(3))
    old = [HEADER.pack(0, canonical_id(v2.raw)) + encode(v2, r)[HEADER.size:] for r in records]
    out = BatchDecoder(catalog, catalog.latest(CARD), max_bytes=1 << 20).decode(old)
    assert out.failures == []
    assert out.columns.to_records()[0]["request_id"] == records[0]["request_id"]
    assert decode(catalog, old[5])[1]["amount"] == pytest.approx(records[5]["amount"])


def test_unknown_id_says_what_helps(catalog: SchemaCatalog) -> None:
    good = encode(catalog.latest(CARD), fraud_generator().generate(1, np.random.default_rng(1))[0][0])
    bad = HEADER.pack(0, 424242) + good[HEADER.size:]
    failure = BatchDecoder(catalog, catalog.latest(CARD), max_bytes=1 << 20).decode([bad]).failures[0]
    assert failure.reason == "unknown_schema"
    assert "schema_dirs" in failure.message and "DRIFTLINE_SCHEMA_REGISTRY__URL" in failure.message
    assert "register the schema" not in failure.message
