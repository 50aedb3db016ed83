"""Data-quality monitors per window: unseen categories (and the impute policy), out-of-range shares, repeats.

The rates' calibration is in ``test_calibration.py``; here: that each monitor
counts what it says through the production path (validator → pipeline →
window sketch → merge → evaluate → policy → alert), and its edges.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.evaluate import DUPLICATES, ColumnResult, evaluate, window_results
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode_many
from driftline.schemas.columnar import columns_from_records, flat_fields
from driftline.schemas.errors import ProfileError
from driftline.schemas.profile import InputProfile
from driftline.schemas.validation import Validator
from driftline.streams.core.drift import DriftMonitor, alert_record, sketch_from_dict
from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.poison import BadRecord
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.windows import SeenIds, WindowFolder
from driftline.streams.settings import EXAMPLE_MODELS

CARD = "driftline.examples.CardTransaction"
CATEGORIES = ["grocery", "fuel", "restaurant", "travel", "electronics", "online_retail", "gambling", "other"]


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)


def manifest_with(tmp: Path, **policy: object) -> Path:
    """The example model with ``policy`` on merchant_category (a copy; the ONNX file and its digest unchanged)."""
    target = tmp / "fraud" / "1"
    shutil.copytree(EXAMPLE_MODELS / "fraud" / "1", target)
    path = target / "manifest.json"
    manifest = json.loads(path.read_text())
    for f in manifest["features"]:
        if f["name"] == "merchant_category":
            f.update(policy)
    path.write_text(json.dumps(manifest))
    return target


# -- the unseen-category policy ---------------------------------------------------------------------------------

def card_profile(**policy: object) -> InputProfile:
    return InputProfile.from_manifest({"features": [{"name": "merchant_category", "kind": "categorical",
                                                     "categories": policy.pop("categories", CATEGORIES),
                                                     **policy}],
                                       "request": {"key_field": "card_id"}})


def records(categories: list[str]) -> list[dict[str, object]]:
    return [{"request_id": f"r{i}", "card_id": "c", "event_time": 0, "merchant_category": c}
            for i, c in enumerate(categories)]


@pytest.mark.parametrize("encoding", ["onehot", "ordinal"])
def test_impute_scores_an_unseen_category_as_the_named_one_and_keeps_it_unseen_for_the_window(
        catalog: SchemaCatalog, encoding: str) -> None:
    schema = catalog.latest(CARD)
    v = Validator(card_profile(unseen="impute", impute="other", encoding=encoding), schema, columns=True)
    out = v.validate(columns_from_records(records(["fuel", "crypto_exchange", "other"]), flat_fields(schema.raw)))
    assert out.failures == [] and out.rows.tolist() == [0, 1, 2]
    assert out.matrix[1].tolist() == out.matrix[2].tolist()  # the model sees "other" for the new value
    assert out.matrix[1].tolist() != out.matrix[0].tolist()
    assert out.codes["merchant_category"].tolist() == [1, -1, 7]  # the window sees it as unseen
    assert out.feature_columns()["merchant_category"].tolist() == ["fuel", "other", "other"]


def test_deadletter_is_the_default_and_names_the_value(catalog: SchemaCatalog) -> None:
    schema = catalog.latest(CARD)
    out = Validator(card_profile(), schema).validate(
        columns_from_records(records(["fuel", "crypto_exchange"]), flat_fields(schema.raw)))
    assert out.rows.tolist() == [0]
    assert [(f.reason, "crypto_exchange" in f.message) for f in out.failures] == [("unknown_category", True)]


@pytest.mark.parametrize(("policy", "says"), [
    ({"unseen": "impute"}, "needs impute set to one of its categories"),
    ({"unseen": "impute", "impute": "crypto"}, "needs impute set to one of its categories"),
    ({"unseen": "drop"}, "unseen must be deadletter or impute"),
    ({"impute": "other"}, "only used with unseen=impute"),
    ({"categories": [1, 2], "unseen": "impute", "impute": 1}, "categories must be strings"),
])
def test_a_wrong_unseen_policy_is_refused_with_what_to_fix(policy: dict[str, object], says: str) -> None:
    with pytest.raises(ProfileError, match=says):
        card_profile(**policy)


# -- through the pipeline ---------------------------------------------------------------------------------------

def pipeline_with(catalog: SchemaCatalog, model: OnnxModel, folder: WindowFolder) -> ScorePipeline:
    return ScorePipeline({"req": ServedModel(model, catalog, max_message_bytes=8192, folder=folder)},
                         catalog.latest("driftline.Prediction"), predictions_topic="p", deadletter_topic="d",
                         deadletter_max_bytes=8192)


def window(catalog: SchemaCatalog, model: OnnxModel, profile: ReferenceProfile, recs: list[dict[str, object]],
           batches: int = 4, max_ids: int = 100_000) -> tuple[WindowSketch, ScorePipeline]:
    folder = WindowFolder(profile, "fraud", "1", "w", length_ms=None, length_events=len(recs), max_ids=max_ids)
    pipe = pipeline_with(catalog, model, folder)
    values = encode_many(catalog.latest(CARD), recs)
    msgs = [RawMessage("req", 0, i, None, v) for i, v in enumerate(values)]
    closed: list[WindowSketch] = []
    for chunk in np.array_split(np.arange(len(msgs)), batches):
        closed += pipe.process([msgs[i] for i in chunk.tolist()], 1_000).sketches
    [sketch] = closed
    return sketch, pipe


def clean(generator, rng: np.random.Generator, n: int, drift=None) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    recs, _ = generator.generate(n, rng, drift=drift or generator.NO_DRIFT)
    return [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]


def flagged(results: list[ColumnResult], alpha: float = 0.01) -> set[tuple[str, str]]:
    return {(r.column, r.statistic) for r in results if r.p_value < alpha}


def test_a_new_category_under_impute_is_scored_and_raises_unseen_share_and_drift(
        tmp_path: Path, catalog: SchemaCatalog, profile: ReferenceProfile, generator) -> None:  # type: ignore[no-untyped-def]
    model = OnnxModel(manifest_with(tmp_path, unseen="impute", impute="other"), providers="cpu")
    model.load()
    rng = np.random.default_rng(3)
    recs = clean(generator, rng, 3000, generator.Drift(new_category=("crypto_exchange", 0.05)))
    new = sum(r["merchant_category"] == "crypto_exchange" for r in recs)
    sketch, _ = window(catalog, model, profile, recs)
    assert sketch.dead_letters == 0 and sketch.messages == 3000  # scored, not dead-lettered
    assert int(sketch.columns["merchant_category"].counts[-1]) == new > 100
    results = evaluate(profile, sketch, 0.01)
    assert {("merchant_category", "unseen_category_rate"), ("merchant_category", "chi2")} <= flagged(results)
    unseen = next(r for r in results if r.statistic == "unseen_category_rate")
    assert unseen.value == pytest.approx(new / 3000) and unseen.reference_n == profile.features[-2].n
    # the same traffic without the new category: nothing about it flags
    calm, _ = window(catalog, model, profile, clean(generator, rng, 3000))
    assert not {s for c, s in flagged(evaluate(profile, calm, 0.01)) if c == "merchant_category"}


def test_values_beyond_the_reference_range_raise_the_out_of_range_share(
        catalog: SchemaCatalog, fraud_model: OnnxModel, profile: ReferenceProfile, generator) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)  # a seed whose clean window flags nothing (about 0.3 of 30 tests would)
    recs = clean(generator, rng, 3000)
    ref = next(f for f in profile.features if f.name == "account_age_days")
    top = float(ref.fine_edges[-1])
    for r in recs[::40]:  # 2.5 % far beyond the reference's top edge, inside the manifest's allowed range
        r["account_age_days"] = min(top * 3 + 100, 36_000)
    sketch, _ = window(catalog, fraud_model, profile, recs)
    results = evaluate(profile, sketch, 0.01)
    assert ("account_age_days", "out_of_range_rate") in flagged(results)
    share = next(r for r in results if (r.column, r.statistic) == ("account_age_days", "out_of_range_rate"))
    assert share.value >= 0.025 and share.threshold < 0.025
    assert not any(s == "out_of_range_rate" for c, s in flagged(results) if c != "account_age_days")


# -- repeated request ids ---------------------------------------------------------------------------------------

def test_seen_ids_count_repeats_in_the_batch_the_window_and_the_last_window() -> None:
    seen = SeenIds(cap=100)
    assert seen.count(np.array(["a", "b", "a"], dtype=object)) == (3, 1)  # within the batch
    assert seen.count(np.array(["b", "c"], dtype=object)) == (2, 1)  # within the window
    seen.roll()
    assert seen.count(np.array(["c", "d", "d"], dtype=object)) == (3, 2)  # from the last window, and again
    seen.roll()
    seen.roll()
    assert seen.count(np.array(["a", "c"], dtype=object)) == (2, 0)  # two windows ago: forgotten


def test_seen_ids_stop_checking_at_the_cap() -> None:
    seen = SeenIds(cap=3)
    assert seen.count(np.array(["a", "b"], dtype=object)) == (2, 0)
    assert seen.count(np.array(["c", "d", "e"], dtype=object)) == (1, 0)  # room for one more id: "c"
    assert seen.count(np.array(["a"], dtype=object)) == (0, 0)  # full: not checked, not counted
    assert len(seen.current) == 3


def test_repeated_requests_are_counted_on_the_window_and_alerted(
        catalog: SchemaCatalog, fraud_model: OnnxModel, profile: ReferenceProfile, generator) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    recs = clean(generator, rng, 3000)
    retried = [dict(r) for r in recs[:60]]  # a producer retried 60 requests (2 %)
    sketch, _ = window(catalog, fraud_model, profile, recs[:1470] + retried + recs[1470:2940])
    assert (sketch.ids, sketch.duplicates) == (3000, 60)
    [dup] = [r for r in window_results(profile, sketch, 0.01, 0.02, 0.001) if r.column == DUPLICATES]
    assert dup.statistic == "duplicate_rate" and dup.value == pytest.approx(0.02) and dup.p_value < 1e-6
    alert = alert_record(sketch, next(d for d in AlertPolicy(PolicyConfig(k=1)).update([dup])[0]), 0)
    assert (alert.kind, alert.feature, alert.statistic) == ("data_quality", None, "duplicate_rate")
    assert "repeated request ids" in alert.message
    calm, _ = window(catalog, fraud_model, profile, recs)
    assert (calm.ids, calm.duplicates) == (3000, 0)
    assert not [r for r in window_results(profile, calm, 0.01, 0.02, 0.001)
                if r.column == DUPLICATES and r.p_value < 0.01]
    off, _ = window(catalog, fraud_model, profile, recs[:2940] + retried, max_ids=0)
    assert (off.ids, off.duplicates) == (0, 0)
    assert not [r for r in window_results(profile, off, 0.01, 0.02, 0.001) if r.column == DUPLICATES]


def test_repeat_counts_merge_and_travel_and_old_sketches_have_none(profile: ReferenceProfile) -> None:
    a = WindowSketch.empty(profile, "fraud", "1", 0, 10, "w1")
    b = WindowSketch.empty(profile, "fraud", "1", 0, 10, "w2")
    a.messages, a.ids, a.duplicates = 10, 8, 2
    b.messages, b.ids, b.duplicates = 5, 5, 1
    merged = sketch_from_dict(json.loads(json.dumps((a + b).to_dict())))
    assert (merged.messages, merged.ids, merged.duplicates) == (15, 13, 3)
    old = (a + b).to_dict()
    del old["ids"], old["duplicates"]
    assert (sketch_from_dict(old).ids, sketch_from_dict(old).duplicates) == (0, 0)
    for bad in ({"ids": 4, "duplicates": 5}, {"ids": 16, "duplicates": 0}, {"ids": -1}):
        with pytest.raises(BadRecord, match="duplicates|ids"):
            sketch_from_dict({**(a + b).to_dict(), **bad})


# -- one column, several statistics -------------------------------------------------------------------------------

def test_a_columns_statistics_have_their_own_alert_ids_and_policy_keys(profile: ReferenceProfile) -> None:
    sketch = WindowSketch.empty(profile, "fraud", "1", 0, 10, "w")
    results = [ColumnResult("amount", "data_quality", s, 0.5, 0.1, 1e-9, 0.0, 0.0, 100, 100)
               for s in ("null_rate", "out_of_range_rate")]
    assert len({r.key for r in results}) == 2
    decisions, _ = AlertPolicy(PolicyConfig(k=1)).update(results)
    assert len({alert_record(sketch, d, 0).id for d in decisions}) == 2
    assert results[0].key == "data_quality:amount"  # saved policy state of the first statistics still matches


def test_the_drift_monitor_tests_repeats_against_the_configured_rate(profile: ReferenceProfile) -> None:
    monitor = DriftMonitor({"fraud": profile}, PolicyConfig(k=1, m=1), grace_ms=0, expected_duplicate_rate=0.05)
    sketch = WindowSketch.empty(profile, "fraud", "1", 0, 10, "w")
    sketch.messages, sketch.ids, sketch.duplicates = 1000, 1000, 40  # 4 %: below the configured 5 %
    monitor.add(sketch)
    [closed] = monitor.close_due(100)
    [dup] = [r for r in closed.results if r.column == DUPLICATES]
    assert dup.p_value > 0.5 and not [a for a in closed.alerts if a.result.column == DUPLICATES]


@pytest.mark.parametrize(("statistic", "severity"), [("out_of_range_rate", "critical"),
                                                     ("unseen_category_rate", "critical"),
                                                     ("duplicate_rate", "warning")])
def test_strong_evidence_makes_a_columns_share_critical(statistic: str, severity: str) -> None:
    """Shares have no PSI: a column's share with p < alpha_critical is critical, like its null rate."""
    r = ColumnResult("amount", "data_quality", statistic, 0.5, 0.1, 1e-9, 0.0, 0.0, 100, 100)
    [decision] = AlertPolicy(PolicyConfig(k=1, detector="none")).update([r])[0]
    assert decision.severity == severity


def test_a_batch_redone_record_by_record_folds_each_request_once(
        catalog: SchemaCatalog, fraud_model: OnnxModel, profile: ReferenceProfile, generator,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another model raising mid-batch makes the batch be redone record by record; the first topic's rows
    must not be in the window twice (nor counted as repeats)."""
    folder = WindowFolder(profile, "fraud", "1", "w", length_ms=None, length_events=1000, max_ids=10_000)
    first = ServedModel(fraud_model, catalog, max_message_bytes=8192, folder=folder)
    second = ServedModel(fraud_model, catalog, max_message_bytes=8192)
    real, calls = second.validator.validate, [0]

    def fails_once(cols, longest=None):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a transient failure in the other model")
        return real(cols, longest)

    monkeypatch.setattr(second.validator, "validate", fails_once)
    pipe = ScorePipeline({"req": first, "req2": second}, catalog.latest("driftline.Prediction"),
                         predictions_topic="p", deadletter_topic="d", deadletter_max_bytes=8192)
    values = encode_many(catalog.latest(CARD), clean(generator, np.random.default_rng(2), 1000))
    closed: list[WindowSketch] = []
    for at in range(0, 1000, 250):
        msgs = [RawMessage("req", 0, i, None, values[i]) for i in range(at, at + 250)]
        closed += pipe.process_safely(msgs + [RawMessage("req2", 0, at, None, values[at])], 1_000).sketches
    [sketch] = closed
    assert calls[0] > 1  # the failure happened, and the batch was redone
    assert (sketch.messages, sketch.ids, sketch.duplicates) == (1000, 1000, 0)
    assert sketch.score.n == 1000


def test_a_discrete_columns_common_top_value_is_no_tail(profile: ReferenceProfile) -> None:
    """hour_of_day's top fine bin is hour 23, about 4 % of the reference: more of it is drift, not out of range."""
    ref = next(f for f in profile.features if f.name == "hour_of_day")
    assert ref.fine_counts[-1] > 0.01 * ref.n  # the premise
    sketch = WindowSketch.empty(profile, "fraud", "1", 0, 10, "w")
    col = sketch.columns["hour_of_day"]
    col.fine[-1], col.fine[len(col.fine) // 2], col.n = 300, 700, 1000  # 30 % at hour 23
    col.counts[-1], col.counts[len(col.counts) // 2] = 300, 700
    [share] = [r for r in evaluate(profile, sketch, 0.01) if r.statistic == "out_of_range_rate"
               and r.column == "hour_of_day"] or [None]
    assert share is None or share.value == 0.0  # only the lower side (below hour 0), if any, is a tail


def test_shares_keep_no_change_detector_state(profile: ReferenceProfile) -> None:
    policy = AlertPolicy(PolicyConfig(detector="adwin"))
    policy.update([ColumnResult("amount", "data_quality", s, 0.5, 0.1, 0.5, 0.0, 0.0, 100, 100)
                   for s in ("null_rate", "out_of_range_rate", "unseen_category_rate", "duplicate_rate")])
    assert set(policy.detectors) == {"data_quality:amount"}  # the null rate's, as before
