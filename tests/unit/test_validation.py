from __future__ import annotations

import math

import numpy as np
import pytest

from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.columnar import Columns, columns_from_records, flat_fields
from driftline.schemas.errors import ProfileError
from driftline.schemas.profile import CategoricalFeature, InputProfile, NumericFeature
from driftline.schemas.validation import Validator

CARD = "driftline.examples.CardTransaction"


def cols(schema: WireSchema, records: list[dict]) -> Columns:
    fields = flat_fields(schema.raw)
    assert fields is not None
    return columns_from_records(records, fields)


@pytest.fixture
def card(catalog: SchemaCatalog) -> WireSchema:
    return catalog.latest(CARD)


@pytest.fixture
def validator(catalog: SchemaCatalog, fraud_model: OnnxModel) -> Validator:
    return Validator(fraud_model.manifest.profile, catalog.latest(CARD))


@pytest.fixture
def good(generator, rng) -> dict:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(1, rng)
    return {**records[0], "avg_amount_7d": 40.0, "device_trust": 0.5, "prior_chargebacks": 0}


@pytest.mark.parametrize(
    ("change", "reason", "culprit"),
    [
        ({"amount": math.nan}, "not_a_number", "amount"),
        ({"amount": math.inf}, "non_finite", "amount"),
        ({"velocity_score": -math.inf}, "non_finite", "velocity_score"),
        ({"amount": -3.0}, "out_of_range", "amount"),
        ({"merchant_risk": 1.5}, "out_of_range", "merchant_risk"),
        ({"hour_of_day": 24}, "out_of_range", "hour_of_day"),
        ({"ip_risk": None}, "null_value", "ip_risk"),
        ({"ip_risk": math.nan}, "not_a_number", "ip_risk"),
        ({"merchant_category": "crypto"}, "unknown_category", "merchant_category"),
        ({"channel": "carrier_pigeon"}, "unknown_category", "channel"),
        ({"card_id": "c" * 129}, "string_too_long", "card_id"),
        ({"country": "x" * 500}, "string_too_long", "country"),
        ({"request_id": ""}, "missing_id", "request_id"),
        ({"device_trust": math.inf}, "non_finite", "device_trust"),
    ],
)
def test_invalid_rows(
    card: WireSchema, validator: Validator, good: dict, change: dict, reason: str, culprit: str
) -> None:
    out = validator.validate(cols(card, [good, {**good, **change}, good]))
    assert out.rows.tolist() == [0, 2]
    assert out.matrix.shape == (2, validator.profile.width)
    (f,) = out.failures
    assert (f.index, f.stage, f.reason) == (1, "validate", reason)
    assert culprit in f.message


@pytest.mark.parametrize(
    ("change", "column", "expected"),
    [
        ({"avg_amount_7d": None}, "avg_amount_7d", "impute"),
        ({"avg_amount_7d": math.nan}, "avg_amount_7d", "impute"),
        ({"device_trust": None}, "device_trust", "impute"),
        ({"prior_chargebacks": None}, "prior_chargebacks", "impute"),
        ({"amount": 0.0}, "amount", 0.0),
        ({"merchant_risk": 1.0}, "merchant_risk", 1.0),
    ],
)
def test_allowed_values(  # type: ignore[no-untyped-def]
    card: WireSchema, validator: Validator, good: dict, change: dict, column: str, expected
) -> None:
    out = validator.validate(cols(card, [{**good, **change}]))
    assert out.failures == []
    col = validator.profile.column_names.index(column)
    spec = next(f for f in validator.profile.features if f.name == column)
    want = spec.impute if expected == "impute" else expected
    assert out.matrix[0, col] == pytest.approx(want)


def test_first_failing_check_wins(card: WireSchema, validator: Validator, good: dict) -> None:
    out = validator.validate(cols(card, [{**good, "request_id": "", "amount": math.nan}]))
    assert out.failures[0].reason == "missing_id"


def test_one_hot_columns(card: WireSchema, validator: Validator, good: dict) -> None:
    out = validator.validate(cols(card, [{**good, "merchant_category": "travel", "channel": "atm"}]))
    names = validator.profile.column_names
    row = dict(zip(names, out.matrix[0].tolist(), strict=True))
    cats = {k: v for k, v in row.items() if k.startswith("merchant_category=")}
    assert cats["merchant_category=travel"] == 1.0 and sum(cats.values()) == 1.0
    assert row["channel=atm"] == 1.0


def test_matrix_matches_a_row_by_row_reference(card: WireSchema, validator: Validator, generator, rng) -> None:  # type: ignore[no-untyped-def]
    records, _ = generator.generate(500, rng)
    out = validator.validate(cols(card, records))
    assert out.failures == [] and out.matrix.dtype == np.float32
    expected = []
    for r in records:
        row: list[float] = []
        for f in validator.profile.features:
            if isinstance(f, NumericFeature):
                v = r[f.name]
                row.append(f.impute if v is None else float(v))
            else:
                row.extend(1.0 if r[f.name] == c else 0.0 for c in f.categories)
        expected.append(row)
    np.testing.assert_allclose(out.matrix, np.array(expected, dtype=np.float32))


def test_ordinal_encoding(catalog: SchemaCatalog, good: dict) -> None:
    profile = InputProfile(
        (CategoricalFeature("channel", ("pos", "online"), "ordinal"),), key_field="card_id"
    )
    out = Validator(profile, catalog.latest(CARD)).validate(cols(catalog.latest(CARD), [{**good, "channel": "online"}]))
    assert out.matrix.tolist() == [[1.0]]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ((NumericFeature("nope"),), "not a field"),
        ((NumericFeature("channel"),), "numeric but"),
        ((CategoricalFeature("amount", ("a",)),), "categorical but"),
    ],
)
def test_profile_must_fit_the_schema(catalog: SchemaCatalog, features, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProfileError, match=message):
        Validator(InputProfile(features, key_field="card_id"), catalog.latest(CARD))


def test_empty_batch(card: WireSchema, validator: Validator) -> None:
    out = validator.validate(cols(card, []))
    assert out.matrix.shape == (0, validator.profile.width) and out.failures == []


def _first_broken_rule(profile: InputProfile, r: dict) -> str | None:
    """The reason a row fails, checked the slow obvious way: field by field, rule by rule, in the documented order."""
    if not r["request_id"]:
        return "missing_id"
    for f in profile.features:
        v = r[f.name]
        if isinstance(f, NumericFeature):
            if v is None and not f.allow_missing:
                return "null_value"
            if v is not None and math.isnan(v) and not f.allow_missing:
                return "not_a_number"
            if v is not None and math.isinf(v):
                return "non_finite"
            if v is not None and not math.isnan(v) and not (f.minimum <= v <= f.maximum):
                return "out_of_range"
        else:
            if v is None:
                return "null_value"
            if v not in f.categories and f.unseen == "deadletter":
                return "unknown_category"
    return None


def test_many_faults_at_once_are_named_like_a_row_by_row_check(card: WireSchema, validator: Validator,
                                                                generator) -> None:  # type: ignore[no-untyped-def]
    """Numeric features are checked as one block; the reason each row gets must still be its first broken rule."""
    rng = np.random.default_rng(11)
    profile = validator.profile
    numeric = [f for f in profile.features if isinstance(f, NumericFeature)]
    categorical = [f for f in profile.features if isinstance(f, CategoricalFeature)]
    records, _ = generator.generate(2000, rng)
    faults = [math.nan, math.inf, -math.inf, -1e12, 1e12, None]
    for r in records:
        for _ in range(int(rng.integers(0, 4))):  # 0-3 faults per row, in any features
            if rng.random() < 0.75:
                f = numeric[int(rng.integers(len(numeric)))]
                r[f.name] = faults[int(rng.integers(len(faults)))]
                if r[f.name] is not None and card.field_types[f.name] in ("int", "long", ["null", "int"]):
                    r[f.name] = None  # an int field cannot hold a float fault
            else:
                f = categorical[int(rng.integers(len(categorical)))]
                r[f.name] = "never-seen"
        if rng.random() < 0.02:
            r["request_id"] = ""
    out = validator.validate(cols(card, records))
    got = {fl.index: fl.reason for fl in out.failures}
    expected = {i: why for i, r in enumerate(records) if (why := _first_broken_rule(profile, r)) is not None}
    assert got == expected
    assert len(expected) > 500 and len(set(expected.values())) >= 5  # the faults were varied enough to test
    assert out.rows.tolist() == [i for i in range(len(records)) if i not in expected]
