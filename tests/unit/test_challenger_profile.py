"""A challenger's reference profile has the requests' null rates, not the imputed matrix's.

`make demo` used to raise CRITICAL null-rate alerts on every window after its own
retrain: the challenger's profile was built from the imputed feature matrix
(null rate 0, a spike at the impute value), so the live 10 %-ish nulls of
`prior_chargebacks`, `device_trust` and `avg_amount_7d` looked like a data
quality incident and the spike like drift.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from driftline.detectors.evaluate import evaluate
from driftline.detectors.profile import NumericReference, ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.columnar import columns_from_records, flat_fields
from driftline.schemas.profile import NumericFeature
from driftline.schemas.validation import Validator
from driftline.streams.core.profiling import PROFILE_FILE, impute, profile_from_matrix
from driftline.streams.settings import EXAMPLE_MODELS

ALPHA = 0.01


def validated(catalog: SchemaCatalog, generator, model: OnnxModel, n: int, seed: int):  # type: ignore[no-untyped-def]
    schema = catalog.latest(model.manifest.request_subject)
    records, _ = generator.generate(n, np.random.default_rng(seed))
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]
    cols = columns_from_records(records, flat_fields(schema.raw, skip_others=True))
    return cols, Validator(model.manifest.profile, schema).validate(cols)


def test_raw_rows_carry_nan_where_a_value_was_imputed_and_impute_restores_the_model_input(
    catalog: SchemaCatalog, generator, fraud_model: OnnxModel  # type: ignore[no-untyped-def]
) -> None:
    cols, batch = validated(catalog, generator, fraud_model, 5_000, seed=1)
    raw = batch.raw(batch.matrix)
    col = 0
    seen = 0
    for f in fraud_model.manifest.profile.features:
        if isinstance(f, NumericFeature):
            nulls = cols.null_mask(f.name)[batch.rows]
            assert np.array_equal(np.isnan(raw[:, col]), nulls), f.name
            seen += int(nulls.sum())
        col += f.width
    assert seen > 100  # the example has nullable features with nulls in them
    assert np.array_equal(impute(raw, fraud_model.manifest.profile), batch.matrix)
    subset = np.arange(len(batch.rows)) % 3 == 0
    assert np.array_equal(batch.raw(batch.matrix[subset], subset), raw[subset], equal_nan=True)


def test_a_challenger_profile_from_raw_rows_raises_nothing_on_requests_that_did_not_drift(
    catalog: SchemaCatalog, generator, fraud_model: OnnxModel, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """The reference from 20,000 raw rows, then 20 windows of 2,000 fresh undrifted requests: at α = 1 % the
    null-rate and KS tests of the nullable features flag at most 2 of 60; from the imputed matrix, all of them."""
    cols, batch = validated(catalog, generator, fraud_model, 20_000, seed=2)
    profile = fraud_model.manifest.profile
    nullable = [f.name for f in profile.features if isinstance(f, NumericFeature) and f.allow_missing]
    assert len(nullable) == 3

    def profile_of(matrix: np.ndarray, name: str) -> ReferenceProfile:
        target = tmp_path / name
        shutil.copytree(EXAMPLE_MODELS / "fraud" / "1", target)
        (target / PROFILE_FILE).unlink()
        return ReferenceProfile.load(profile_from_matrix(target, matrix, fraud_model.predict(batch.matrix)))

    fixed = profile_of(batch.raw(batch.matrix), "raw")
    old = profile_of(batch.matrix, "imputed")
    # the joint rows are the requests' rows: nulls as NaN, categories by name, and they score as the matrix did
    assert fixed.rows is not None and fixed.rows.n == 256
    assert all(np.isnan(fixed.rows.columns[name]).any() for name in nullable)
    np.testing.assert_allclose(fraud_model.predict_columns(fixed.rows.columns),
                               fraud_model.predict(profile.encode(fixed.rows.columns)))
    assert set(fixed.rows.columns["channel"]) <= set(generator.CHANNELS)
    for name in nullable:
        ref = next(r for r in fixed.features if r.name == name)
        assert isinstance(ref, NumericReference)
        assert ref.null_rate == cols.null_mask(name)[batch.rows].mean() > 0.01

    def flagged(reference: ReferenceProfile) -> int:
        hits = 0
        for seed in range(20):
            wcols, wbatch = validated(catalog, generator, fraud_model, 2_000, seed=100 + seed)
            sketch = WindowSketch.empty(reference, "fraud", "1", 0, 1)
            good = wcols.take(wbatch.rows)
            sketch.fold(reference, good.values, {f: good.null_mask(f) for f in good.values},
                        fraud_model.predict(wbatch.matrix), len(wbatch.rows), 0)
            hits += sum(r.p_value < ALPHA for r in evaluate(reference, sketch, ALPHA) if r.column in nullable)
        return hits

    assert flagged(fixed) <= 2
    assert flagged(old) >= 40  # the old way: every null-rate test fires
