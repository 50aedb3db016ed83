"""Which drift matters: drifted features ranked by their estimated effect on a real ONNX model's score.

The model is a logistic regression written with the ONNX helper, so its
dependence on each feature is known exactly: strong on ``a``, weak on ``b``,
none on ``c`` (weight 0), moderate on the category ``colour``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.evaluate import evaluate
from driftline.detectors.impact import BY_PSI, BY_SCORE, binned_cdf, binned_quantile, drifted, impacts, rank_drift, swap
from driftline.detectors.policy import PolicyConfig
from driftline.detectors.profile import (
    CategoricalReference,
    JointRows,
    NumericReference,
    ReferenceProfile,
)
from driftline.detectors.sketch import WindowSketch
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry, write_version
from driftline.streams.core.drift import DriftMonitor, alert_record
from driftline.streams.core.impact import ImpactRanker
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.settings import EXAMPLE_MODELS

WEIGHTS = {"a": 2.0, "b": 0.05, "c": 0.0}
COLOURS = ("red", "blue")
COLOUR_WEIGHTS = (0.6, -0.6)
ALPHA = 0.01
REF_N, WINDOW_N = 20_000, 4_000
#: a model that ignores a feature gives bit-identical scores whatever its values: its impact is 0 within this
IGNORED_TOLERANCE = 1e-9


def logistic_onnx() -> bytes:
    from onnx import TensorProto, helper

    w = np.array([*WEIGHTS.values(), *COLOUR_WEIGHTS], dtype=np.float32).reshape(-1, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["score"])],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(w)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def reference(rng: np.random.Generator, n: int, shift: float = 0.0, red: float = 0.5) -> dict[str, np.ndarray]:
    """Three N(0, 1) features (the same distribution, so the same shift is the same effect size) and a colour."""
    cols: dict[str, np.ndarray] = {name: rng.normal(shift, 1.0, n) for name in WEIGHTS}
    cols["colour"] = np.where(rng.random(n) < red, "red", "blue").astype(object)
    return cols


def build_profile(cols: dict[str, np.ndarray], scores: np.ndarray, *, rows: bool = True) -> ReferenceProfile:
    feats = (*(NumericReference.build(n, cols[n]) for n in WEIGHTS),
             CategoricalReference.build("colour", cols["colour"], COLOURS))
    return ReferenceProfile(feats, NumericReference.build("score", scores),
                            rows=JointRows.build(cols, np.random.default_rng(0)) if rows else None)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    manifest = {
        "name": "toy", "version": "1", "task": "binary_classification", "labels": ["no", "yes"], "threshold": 0.5,
        "request": {"subject": "driftline.tests.Toy", "id_field": "id", "key_field": "id", "time_field": None},
        "features": [*({"name": n, "kind": "numeric"} for n in WEIGHTS),
                     {"name": "colour", "kind": "categorical", "categories": list(COLOURS)}],
        "onnx": {"input": "features", "output": "score", "output_index": 0},
    }
    write_version(root, logistic_onnx(), manifest)
    return root


@pytest.fixture(scope="module")
def model(registry: Path) -> OnnxModel:
    m = OnnxModel(registry / "toy" / "1", providers="cpu")
    m.load()
    return m


@pytest.fixture(scope="module")
def profile(registry: Path, model: OnnxModel) -> ReferenceProfile:
    cols = reference(np.random.default_rng(1), REF_N)
    built = build_profile(cols, model.predict_columns(cols))
    built.save(registry / "toy" / "1" / PROFILE_FILE)
    return built


def window(profile: ReferenceProfile, model: OnnxModel, cols: dict[str, np.ndarray]) -> WindowSketch:
    sketch = WindowSketch.empty(profile, "toy", "1", 0, 60_000)
    sketch.fold(profile, cols, {}, model.predict_columns(cols), len(cols["a"]), 0)
    return sketch


def drifted_window(profile: ReferenceProfile, model: OnnxModel) -> WindowSketch:
    """a, b and c all shifted by half a standard deviation; the colour unchanged."""
    return window(profile, model, reference(np.random.default_rng(2), WINDOW_N, shift=0.5))


def test_the_feature_the_model_leans_on_ranks_first(profile: ReferenceProfile, model: OnnxModel) -> None:
    sketch = drifted_window(profile, model)
    flagged = drifted(evaluate(profile, sketch, ALPHA), ALPHA)
    assert {r.column for r in flagged} == {"a", "b", "c"}
    psi = {r.column: r.psi for r in flagged}
    assert max(psi.values()) < 1.5 * min(psi.values())  # the same effect size, as the tests see it
    ranked = rank_drift(profile, sketch, flagged, model.predict_columns)
    assert [ranked[n].rank for n in ("a", "b", "c")] == [1, 2, 3]
    assert {r.of for r in ranked.values()} == {3} and {r.method for r in ranked.values()} == {BY_SCORE}
    a, b, c = (ranked[n].impact for n in ("a", "b", "c"))
    assert a is not None and b is not None and c is not None
    assert a > 0.05  # a half-sd shift of the strong feature moves the scores by ~0.1 (W1, probability units)
    assert a > 20 * b > 0  # the weights differ 40-fold
    assert c <= IGNORED_TOLERANCE  # ignored: the scores are the same numbers


def test_an_ignored_feature_has_no_impact_however_far_it_moves(profile: ReferenceProfile, model: OnnxModel) -> None:
    cols = reference(np.random.default_rng(3), WINDOW_N)
    cols["c"] = cols["c"] * 3 + 4
    got = impacts(profile, window(profile, model, cols), ["c"], model.predict_columns)
    assert got["c"] <= IGNORED_TOLERANCE


def test_a_category_share_change_is_weighed_too(profile: ReferenceProfile, model: OnnxModel) -> None:
    cols = reference(np.random.default_rng(4), WINDOW_N, red=0.8)
    sketch = window(profile, model, cols)
    flagged = drifted(evaluate(profile, sketch, ALPHA), ALPHA)
    assert [r.column for r in flagged] == ["colour"]
    impact = impacts(profile, sketch, ["colour"], model.predict_columns)["colour"]
    # 30 % of the rows go from blue to red: their scores move by about 1.2 * p(1-p) ≈ 0.3; W1 ≈ 0.3 * 0.3
    assert 0.04 < impact < 0.15


def test_an_undrifted_window_changes_nothing(profile: ReferenceProfile, model: OnnxModel) -> None:
    sketch = window(profile, model, reference(np.random.default_rng(5), WINDOW_N))
    assert drifted(evaluate(profile, sketch, ALPHA), ALPHA) == []
    assert rank_drift(profile, sketch, [], model.predict_columns) == {}
    # estimated anyway, the strong feature's impact is sampling noise: far below what a real shift gives
    noise = impacts(profile, sketch, ["a"], model.predict_columns)["a"]
    shifted = impacts(profile, drifted_window(profile, model), ["a"], model.predict_columns)["a"]
    assert noise < 0.2 * shifted


def test_shares_equal_to_the_reference_move_no_value(profile: ReferenceProfile) -> None:
    """Numbers at the same quantile and categories at the reference's own shares: nothing moves, impact 0."""
    rows = profile.rows
    assert rows is not None
    rng = np.random.default_rng(6)
    a = next(f for f in profile.features if f.name == "a")
    assert isinstance(a, NumericReference)
    same = WindowSketch.empty(profile, "toy", "1", 0, 1).columns["a"]
    same.fine = a.fine_counts.copy()
    base, moved = swap(a, rows.columns["a"], same, rng)
    np.testing.assert_array_equal(base, moved)
    # and the reference side is the rows' own values, up to the reference sample's resolution
    assert np.abs(base - rows.columns["a"]).max() < 0.1
    colour = next(f for f in profile.features if f.name == "colour")
    shares = WindowSketch.empty(profile, "toy", "1", 0, 1).columns["colour"]
    values = rows.columns["colour"]
    assert isinstance(colour, CategoricalReference)
    shares.counts = colour.counts * 3  # the reference's own shares (not the 256 rows', which differ by chance)
    base, moved = swap(colour, values, shares, rng)
    assert list(base) == list(moved) == list(values)


def test_binned_quantiles_follow_the_shares() -> None:
    rng = np.random.default_rng(7)
    x = np.sort(rng.normal(0, 1, 50_000))
    ref = NumericReference.build("x", x)
    u = (np.arange(1000) + 0.5) / 1000
    got = binned_quantile(ref, ref.fine_counts, u)
    np.testing.assert_allclose(np.searchsorted(x, got) / len(x), u, atol=0.005)  # the reference's own quantiles
    np.testing.assert_allclose(binned_cdf(ref, got, np.zeros(len(u))), u, atol=0.005)  # and back
    upper = np.zeros_like(ref.fine_counts)
    upper[len(upper) // 2:] = 1  # the window holds only the upper half of the reference
    assert (binned_quantile(ref, upper, u) >= ref.fine_edges[len(upper) // 2 - 1]).all()


def test_old_profiles_without_rows_rank_by_psi(profile: ReferenceProfile, model: OnnxModel) -> None:
    old = ReferenceProfile.from_json(replace(profile, rows=None).to_json())
    assert old.rows is None
    sketch = drifted_window(old, model)
    flagged = drifted(evaluate(old, sketch, ALPHA), ALPHA)
    ranked = rank_drift(old, sketch, flagged, model.predict_columns)
    by_psi = sorted(flagged, key=lambda r: -r.psi)
    assert [ranked[r.column].rank for r in by_psi] == [1, 2, 3]
    assert {r.method for r in ranked.values()} == {BY_PSI} and all(r.impact is None for r in ranked.values())
    decision = next(d for d in closed_window(old, sketch).alerts if d.result.column == by_psi[0].column)
    alert = alert_record(sketch, decision, 1, ranked)
    assert alert.impact is None and alert.impact_rank == 1 and alert.drifted_features == 3
    assert "rank 1 of 3 drifted features by PSI" in alert.message


def test_rows_survive_json_and_a_broken_rows_section_only_turns_ranking_off(profile: ReferenceProfile) -> None:
    back = ReferenceProfile.from_json(profile.to_json())
    assert back.rows is not None and profile.rows is not None and back.rows.n == profile.rows.n == 256
    for name, values in profile.rows.columns.items():
        assert list(back.rows.columns[name]) == list(values)
    broken = profile.to_json().replace('"rows": {"columns": {"a"', '"rows": {"columns": {"zz"')
    again = ReferenceProfile.from_json(broken)
    assert again.rows is None and [f.name for f in again.features] == [f.name for f in back.features]


def test_the_example_profile_has_its_rows() -> None:
    example = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
    assert example.rows is not None and example.rows.n == 256
    assert set(example.rows.columns) == {f.name for f in example.features}
    assert example.multivariate is not None


def closed_window(profile: ReferenceProfile, sketch: WindowSketch):  # type: ignore[no-untyped-def]
    monitor = DriftMonitor({"toy": profile}, PolicyConfig(alpha=ALPHA), grace_ms=0)
    closed = None
    for i in range(2):
        monitor.add(replace(sketch, start_ms=i * 60_000, end_ms=(i + 1) * 60_000))
        (closed,) = monitor.close_due((i + 2) * 60_000)
    return closed


def test_the_drift_agent_ranks_with_the_versions_own_model(registry: Path, profile: ReferenceProfile,
                                                           model: OnnxModel) -> None:
    sketch = drifted_window(profile, model)
    closed = closed_window(profile, sketch)
    assert {d.result.column for d in closed.alerts if d.result.kind == "data_drift"} == {"a", "b", "c"}
    ranker = ImpactRanker(ModelRegistry(registry), ALPHA)
    ranked = ranker.rank(closed, profile)
    alerts = {a.feature: a for a in (alert_record(closed.sketch, d, 1, ranked) for d in closed.alerts)
              if a.kind == "data_drift"}  # a shifted column's out-of-range share may alert too, unranked
    assert [alerts[n].impact_rank for n in ("a", "b", "c")] == [1, 2, 3]
    a = alerts["a"]
    assert a.drifted_features == 3 and a.impact is not None and a.impact > 0.05
    assert "rank 1 of 3 drifted features by effect on the score (W1 " in a.message
    assert alerts["c"].impact is not None and alerts["c"].impact <= IGNORED_TOLERANCE
    score_alerts = [alert_record(closed.sketch, d, 1, ranked) for d in closed.alerts if d.result.kind != "data_drift"]
    assert all(x.impact_rank is None for x in score_alerts)


def test_a_version_that_does_not_load_ranks_by_psi(tmp_path: Path, profile: ReferenceProfile,
                                                     model: OnnxModel) -> None:
    closed = closed_window(profile, drifted_window(profile, model))
    ranked = ImpactRanker(ModelRegistry(tmp_path), ALPHA).rank(closed, profile)  # an empty registry
    assert {r.method for r in ranked.values()} == {BY_PSI} and len(ranked) == 3


def test_no_value_of_a_personal_feature_reaches_an_alert(registry: Path, profile: ReferenceProfile,
                                                         model: OnnxModel) -> None:
    personal = replace(profile, personal=frozenset({"a", "colour"}))
    cols = reference(np.random.default_rng(8), WINDOW_N, shift=0.5, red=0.8)
    sketch = window(personal, model, cols)
    closed = closed_window(personal, sketch)
    ranked = ImpactRanker(ModelRegistry(registry), ALPHA).rank(closed, personal)
    assert ranked["a"].rank == 1
    alerts = [alert_record(closed.sketch, d, 1, ranked) for d in closed.alerts]
    assert any(x.feature == "a" for x in alerts) and any(x.feature == "colour" for x in alerts)
    for alert, decision in zip(alerts, closed.alerts, strict=True):
        r = decision.result
        # every number in the message is a statistic of the window, none a value of the field
        stats = {f"{r.value:.4g}", f"{r.threshold:.4g}", f"{r.p_value:.2g}", f"{r.psi:.3f}", f"{r.psi_threshold:.3f}",
                 "1", "2"}  # W1, chi2
        if alert.impact_rank is not None:
            stats |= {str(alert.impact_rank), str(alert.drifted_features), f"{alert.impact:.3g}"}
        assert set(re.findall(r"\d[\d.e+-]*\d|\d", alert.message)) <= stats, alert.message
        if alert.feature in personal.personal:
            assert all(re.fullmatch(r"(bin|category) \d+|\(other\)", b.bin) for b in alert.top_bins)
    text = " ".join(str(x.to_avro()) for x in alerts)
    assert not re.search(r"\b(red|blue)\b", text)


def test_feature_columns_encode_as_validation_does(catalog, generator, fraud_model: OnnxModel) -> None:  # type: ignore[no-untyped-def]
    from driftline.schemas.columnar import columns_from_records, flat_fields
    from driftline.schemas.validation import Validator

    schema = catalog.latest("driftline.examples.CardTransaction")
    profile = fraud_model.manifest.profile
    records, _ = generator.generate(500, np.random.default_rng(9))
    cols = columns_from_records(records, flat_fields(schema.raw))
    batch = Validator(profile, schema).validate(cols)
    good = cols.take(batch.rows)
    features = {f.name: np.where(good.null_mask(f.name), np.nan, good.values[f.name].astype(np.float64))
                if f.name not in ("merchant_category", "channel") else good.values[f.name] for f in profile.features}
    np.testing.assert_array_equal(profile.encode(features), batch.matrix)


def test_alert_v2_carries_the_rank_and_v1_records_still_read(catalog) -> None:  # type: ignore[no-untyped-def]
    from driftline.schemas.codec import encode
    from driftline.streams.core.events import Alert, encode_event, read_alert

    alert = Alert("a1", "toy", "1", "data_drift", "warning", "a", "chi2", 9.0, 3.0, 0, 60_000, 4000, 20_000, (),
                  "a: ...; rank 1 of 3 drifted features by effect on the score (W1 0.145)", 61_000,
                  impact=0.145, impact_rank=1, drifted_features=3)
    assert catalog.latest("driftline.Alert").version == 2
    assert read_alert(catalog, encode_event(catalog, alert)) == alert
    v1 = catalog.get("driftline.Alert", 1)
    old = read_alert(catalog, encode(v1, {k: v for k, v in alert.to_avro().items()
                                          if k not in ("impact", "impact_rank", "drifted_features")}, fast=True))
    assert isinstance(old, Alert) and (old.impact, old.impact_rank, old.drifted_features) == (None, None, None)
    assert old.message == alert.message


def test_the_report_lists_a_windows_drifted_features_by_rank() -> None:
    from driftline.streams.cli import report
    from driftline.streams.core.events import Alert

    def alert(feature: str, rank: int, impact: float | None) -> Alert:
        return Alert(feature, "toy", "1", "data_drift", "warning", feature, "chi2", 9.0, 3.0, 0, 60_000, 4000,
                     20_000, (), f"{feature}: rank {rank}", 61_000, impact=impact, impact_rank=rank,
                     drifted_features=3)

    page = report.render("toy", [], [alert("c", 3, 0.0), alert("a", 1, 0.145), alert("b", 2, 0.0041)], 0, 60_000,
                         ALPHA)
    section = page[page.index("Which drift matters"):page.index("Alerts of the period")]
    assert re.search(r"1\. a \(W1 0\.145\), 2\. b \(W1 0\.0041\), 3\. c \(W1 0\)", section)
    listed = page[page.index("Alerts of the period"):]
    assert listed.index("a: rank 1") < listed.index("b: rank 2") < listed.index("c: rank 3")


def test_unseen_values_count_as_the_category_they_are_scored_as(profile: ReferenceProfile) -> None:
    """Under unseen="impute", a window of new values is scored as the impute category: the rows move there."""
    rows = profile.rows
    assert rows is not None
    colour = next(f for f in profile.features if f.name == "colour")
    assert isinstance(colour, CategoricalReference)
    unseen = WindowSketch.empty(profile, "toy", "1", 0, 1).columns["colour"]
    unseen.counts = np.array([0, 0, 500])  # every value new
    _, moved = swap(colour, rows.columns["colour"], unseen, np.random.default_rng(3), "blue")
    assert set(moved) == {"blue"}
    _, kept = swap(colour, rows.columns["colour"], unseen, np.random.default_rng(3))  # dead letters: no shares
    assert list(kept) == list(rows.columns["colour"])
