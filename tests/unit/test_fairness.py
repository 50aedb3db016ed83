"""Bias audits, no broker: the figures equal fairlearn's, the test is calibrated and has power, sketches carry them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from driftline.detectors.evaluate import BIAS, DEMOGRAPHIC_PARITY, bias_results
from driftline.detectors.fairness import (
    FACTORIZE_MAX_VALUES,
    FN,
    FP,
    MISSING,
    OTHER,
    POSITIVE,
    SEPARATOR,
    TN,
    TP,
    N,
    SegmentCounts,
    disparities,
    group_name,
    group_rates,
    rate_disparity_p,
    segment_text,
)
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.errors import ModelError
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.drift import DriftMonitor, alert_record, sketch_from_dict
from driftline.streams.core.poison import BadRecord
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.settings import EXAMPLE_MODELS

ALPHA = 0.01


def labeled(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment values (with nulls), decisions and labels whose rates differ by group."""
    groups = rng.choice(np.array(["de", "fr", "us", None], dtype=object), size=n, p=[0.5, 0.3, 0.15, 0.05])
    base = np.where(groups == "de", 0.2, np.where(groups == "fr", 0.35, 0.5))
    truth = rng.random(n) < base
    decided = np.where(truth, rng.random(n) < 0.8, rng.random(n) < base / 2)
    return groups, decided, truth


def test_the_figures_equal_fairlearns(rng: np.random.Generator) -> None:
    groups, decided, truth = labeled(rng, 5_000)
    counts = SegmentCounts.fold(groups, decided, labels=truth)
    sensitive = np.where(groups == None, MISSING, groups).astype(str)  # noqa: E711 - elementwise
    frame = MetricFrame(metrics={"selection_rate": selection_rate, "accuracy": accuracy_score,
                                 "tpr": true_positive_rate, "fpr": false_positive_rate},
                        y_true=truth, y_pred=decided, sensitive_features=sensitive)
    by_group = frame.by_group
    for g in group_rates(counts):
        row = by_group.loc[g.value]
        assert g.requests == int((sensitive == g.value).sum())
        assert g.positive_rate == pytest.approx(row["selection_rate"])
        assert g.accuracy == pytest.approx(row["accuracy"])
        assert g.true_positive_rate == pytest.approx(row["tpr"])
        assert g.false_positive_rate == pytest.approx(row["fpr"])
    d = disparities(counts)
    kw = {"y_true": truth, "y_pred": decided, "sensitive_features": sensitive}
    assert d.demographic_parity_difference == pytest.approx(demographic_parity_difference(**kw))
    assert d.demographic_parity_ratio == pytest.approx(demographic_parity_ratio(**kw))
    assert d.equal_opportunity_difference == pytest.approx(equal_opportunity_difference(**kw))
    assert d.equalized_odds_difference == pytest.approx(equalized_odds_difference(**kw))


def test_counts_of_any_split_merge_into_the_whole(rng: np.random.Generator) -> None:
    groups, decided, truth = labeled(rng, 3_000)
    whole = SegmentCounts.fold(groups, decided, labels=truth)
    cuts = [0, 7, 700, 1_800, 3_000]
    parts = [SegmentCounts.fold(groups[a:b], decided[a:b], labels=truth[a:b])
             for a, b in zip(cuts, cuts[1:], strict=False)]
    merged = SegmentCounts.empty()
    for p in reversed(parts):
        merged = merged + p
    assert merged.values == whole.values
    assert (merged.counts == whole.counts).all()
    back = SegmentCounts.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert back.values == whole.values and (back.counts == whole.counts).all()


def test_many_values_are_capped_to_the_most_frequent_plus_other() -> None:
    values = np.array([f"v{i % 40}" for i in range(1_000)] + ["big"] * 500, dtype=object)
    counts = SegmentCounts.fold(values, np.ones(len(values), dtype=bool)).capped(5)
    assert len(counts.values) == 5 and OTHER in counts.values and "big" in counts.values
    assert counts.total == len(values)


def test_bad_segment_values_get_their_own_group_and_never_raise() -> None:
    ints = SegmentCounts.fold(np.array([3, 3, 7]), np.array([True, False, False]))
    assert ints.values == ("3", "7")
    nulled = SegmentCounts.fold(np.array(["a", None, ""], dtype=object), np.array([1.0, 0.0, 1.0]),
                                np.array([False, False, True]))
    assert nulled.values == (MISSING, "a") and nulled.counts[:, 0].tolist() == [2, 1]


@pytest.mark.parametrize("distinct", [1, 5, FACTORIZE_MAX_VALUES, FACTORIZE_MAX_VALUES + 1])
def test_hashed_groups_equal_the_sorted_text_path(rng: np.random.Generator, distinct: int) -> None:
    """The hashing path gives the values and counts np.unique over the text gives, odd values included."""
    odd = ["", None, "x" * 300, "tab\there", f"a{SEPARATOR}b", "\ufffd", "(missing)", "(other)", "ü", "\x00",
           "v1\x00", "\x00v1"]
    pool = np.array(odd + [f"v{i}" for i in range(max(0, distinct - len(odd)))], dtype=object)[:distinct]
    for _ in range(200):
        n = int(rng.integers(1, 400))
        values = pool[rng.integers(0, len(pool), n)]
        nulls = rng.random(n) < 0.1 if rng.random() < 0.5 else None
        decided, labels = rng.random(n) < 0.3, rng.random(n) < 0.5
        got = SegmentCounts.fold(values, decided, nulls, labels=labels)
        uniq, codes = np.unique(segment_text(values, nulls), return_inverse=True)
        names = np.asarray([group_name(u) for u in uniq.tolist()], dtype=object)
        want_values, merged = np.unique(names, return_inverse=True)
        group, k = merged[codes], len(want_values)
        assert got.values == tuple(want_values.tolist())
        for col, rows in ((N, slice(None)), (POSITIVE, decided), (TP, decided & labels), (FP, decided & ~labels),
                          (FN, ~decided & labels), (TN, ~decided & ~labels)):
            assert got.counts[:, col].tolist() == np.bincount(group[rows], minlength=k).tolist()


def test_values_equal_but_printed_differently_stay_apart() -> None:
    mixed = SegmentCounts.fold(np.array([1, True, 1.0, "1"], dtype=object), np.array([1, 0, 0, 1]))
    assert mixed.values == ("1", "1.0", "True") and mixed.counts[:, N].tolist() == [2, 1, 1]


def null_windows(rng: np.random.Generator, windows: int) -> list[SegmentCounts]:
    """Windows of a model that treats every segment alike: a big, a middling and a 12-request segment."""
    sizes = {"big": 800, "mid": 150, "rare": 12}
    out = []
    for _ in range(windows):
        values = np.concatenate([np.full(n, v, dtype=object) for v, n in sizes.items()])
        out.append(SegmentCounts.fold(values, rng.random(len(values)) < 0.1))
    return out


def test_no_difference_is_flagged_in_at_most_alpha_of_windows_and_never_alerts() -> None:
    """5,000 windows: a 1 % rate gives 50 ± 7 flags, a 2 % one 100 ± 10, so the bound 75 tells them apart."""
    windows = null_windows(np.random.default_rng(19), 5_000)
    flags = sum(rate_disparity_p(w.counts[:, 1], w.counts[:, 0]) < ALPHA for w in windows)
    assert flags <= 75
    policy = AlertPolicy(PolicyConfig(alpha=ALPHA))
    alerts = [a for w in windows[:2_000] for a in policy.update(bias_results({"country": w}, 0.1, 10))[0]]
    assert len(alerts) <= 2  # flagged (k=2 of m=3) needs two flags in three windows: about 3 in 10,000 by chance


def test_a_model_declining_one_segment_twice_as_often_alerts_within_two_windows() -> None:
    rng = np.random.default_rng(7)
    policy = AlertPolicy(PolicyConfig(alpha=ALPHA))
    fired = []
    for _ in range(2):
        values = np.array(["A"] * 600 + ["B"] * 400, dtype=object)
        declined = rng.random(1_000) < np.where(values == "A", 0.1, 0.2)
        fired += policy.update(bias_results({"country": SegmentCounts.fold(values, declined)}, 0.05, 10))[0]
    assert len(fired) == 1
    result = fired[0].result
    assert (result.kind, result.column, result.statistic) == (BIAS, "country", DEMOGRAPHIC_PARITY)
    assert result.value > 0.05 and result.p_value < ALPHA
    assert {v for v, _, _ in result.top_bins} == {"A", "B"}


def test_a_significant_disparity_within_its_bound_is_no_finding() -> None:
    values = np.array(["A"] * 50_000 + ["B"] * 50_000, dtype=object)
    decided = np.random.default_rng(3).random(100_000) < np.where(values == "A", 0.10, 0.12)
    (r,) = bias_results({"country": SegmentCounts.fold(values, decided)}, 0.05, 10)
    assert r.p_value < 1e-6 and r.value < r.threshold
    policy = AlertPolicy(PolicyConfig(alpha=ALPHA))
    assert not [a for _ in range(5) for a in policy.update([r])[0]]


def test_a_rare_segment_far_off_by_chance_does_not_flag() -> None:
    """Twelve requests, 3 positive (25 %) beside 10 % of 1,000: p well above alpha."""
    counts = SegmentCounts(("big", "rare"), np.array([[1000, 100, 0, 0, 0, 0], [12, 3, 0, 0, 0, 0]]))
    (r,) = bias_results({"country": counts}, 0.1, 10)
    assert r.value > r.threshold and r.p_value > ALPHA


def test_sketches_carry_segments_and_old_sketches_still_decode() -> None:
    counts = SegmentCounts.fold(np.array(["a", "b", "b"], dtype=object), np.array([True, False, True]))
    sketch = WindowSketch("fraud", "1", 0, 10, {}, _score(), messages=3, segments={"country": counts})
    d = json.loads(json.dumps(sketch.to_dict()))
    back = sketch_from_dict(d)
    assert back.segments["country"].counts.tolist() == counts.counts.tolist()
    merged = back + sketch_from_dict(d)
    assert merged.segments["country"].counts[:, 0].tolist() == [2, 4]
    old = {k: v for k, v in d.items() if k != "segments"}
    assert sketch_from_dict(old).segments == {} and WindowSketch.from_dict(old).segments == {}
    assert (sketch_from_dict(old) + back).segments["country"].total == 3


@pytest.mark.parametrize("segments", [
    [], {"country": 1}, {"country": {"values": ["a", "a"], "counts": [[1, 0, 0, 0, 0, 0]] * 2}},
    {"country": {"values": ["a"], "counts": [[1, 2, 0, 0, 0, 0]]}},
    {"country": {"values": ["a"], "counts": [[1, 0, 0]]}},
])
def test_bad_segment_records_are_refused_not_raised(segments: object) -> None:
    d = WindowSketch("fraud", "1", 0, 10, {}, _score(), messages=3).to_dict()
    with pytest.raises(BadRecord):
        sketch_from_dict({**d, "segments": segments})


def _score():  # type: ignore[no-untyped-def]
    from driftline.detectors.sketch import ColumnSketch
    return ColumnSketch(np.zeros(2, np.int64), np.zeros(0, np.int64))


def model_with(tmp_path: Path, **fields: object) -> OnnxModel:
    target = tmp_path / "models" / "fraud"
    shutil.copytree(EXAMPLE_MODELS / "fraud", target)
    manifest = json.loads((target / "1" / "manifest.json").read_text())
    (target / "1" / "manifest.json").write_text(json.dumps({**manifest, **fields}))
    return OnnxModel(target / "1", providers="cpu")


@pytest.mark.parametrize(("fields", "says"), [
    ({"segments": ["contry"]}, "segments lists 'contry', which"),
    ({"segments": ["country"], "personal": ["country"]}, "segment 'country' is a personal field"),
    ({"segments": ["amount"]}, "segment 'amount' is double"),
])
def test_segments_the_request_cannot_give_stop_at_start(tmp_path: Path, catalog: SchemaCatalog,
                                                        fields: dict[str, object], says: str) -> None:
    model = model_with(tmp_path, **fields)
    model.load()
    with pytest.raises(ModelError, match=says) as err:
        model.manifest.check_request(catalog.latest(model.manifest.request_subject))
    assert "\n" not in str(err.value)


def test_segments_must_be_names(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="segments must be a list"):
        model_with(tmp_path, segments="country").load()


def test_the_monitor_raises_a_bias_alert_with_the_values_in_its_message() -> None:
    profile = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
    monitor = DriftMonitor({"fraud": profile}, PolicyConfig(alpha=ALPHA, k=1, m=1), grace_ms=0, bias_bound=0.05)
    rng = np.random.default_rng(5)
    values = np.array(["A"] * 600 + ["B"] * 400, dtype=object)
    counts = SegmentCounts.fold(values, rng.random(1_000) < np.where(values == "A", 0.1, 0.3))
    sketch = WindowSketch.empty(profile, "fraud", "1", 0, 10)
    sketch.messages, sketch.segments = 1_000, {"country": counts}
    monitor.add(sketch)
    (closed,) = monitor.close_due(10**15)
    (decision,) = [a for a in closed.alerts if a.result.kind == BIAS]
    alert = alert_record(closed.sketch, decision, 0)
    assert alert.kind == "bias" and alert.feature == "country" and alert.severity == "critical"
    assert "B 3" in alert.message and "A " in alert.message and not math.isnan(alert.value)


def scored_batch(catalog: SchemaCatalog, model: OnnxModel, generator, n: int):  # type: ignore[no-untyped-def]
    """Score ``n`` example requests with the scored records on: (the records, the outcome, the window folder)."""
    from driftline.schemas.codec import encode_many
    from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
    from driftline.streams.core.windows import WindowFolder

    profile = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
    folder = WindowFolder(profile, "fraud", "1", "w0", length_ms=None, length_events=10_000)
    pipe = ScorePipeline({"req": ServedModel(model, catalog, max_message_bytes=8192, folder=folder)},
                         catalog.latest("driftline.Prediction"), predictions_topic="p", deadletter_topic="d",
                         deadletter_max_bytes=8192, scored=(catalog.latest("driftline.Scored"), "s"))
    records, _ = generator.generate(n, np.random.default_rng(1), drift=generator.NO_DRIFT)
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
    return records, pipe.process([RawMessage("req", 0, i, None, v) for i, v in enumerate(values)], 1_000), folder


@pytest.mark.parametrize("n", [20, 300])  # fastavro below the columnar writer's batch size, the writer above
def test_scored_records_carry_the_segment_values_to_the_label_join(catalog: SchemaCatalog, fraud_model: OnnxModel,
                                                                   generator, n: int) -> None:  # type: ignore[no-untyped-def]
    from driftline.schemas.codec import decode
    from driftline.streams.app.feedback import scored_of

    records, out, folder = scored_batch(catalog, fraud_model, generator, n)
    by_id = {r["request_id"]: r for r in records}
    scored = [scored_of(decode(catalog, r.value, fast=True)[1]) for r in out.scored]
    assert len(scored) == len(out.predictions) > 0.8 * n
    for s in scored:
        assert s.segments == f"{by_id[s.request_id]['country']}\x1f{by_id[s.request_id]['channel']}"
    window = folder.current
    assert window is not None and set(window.segments) == {"country", "channel"}
    decided = sum(s.score >= fraud_model.manifest.threshold for s in scored)
    assert window.segments["country"].total == len(scored)
    assert int(window.segments["country"].counts[:, 1].sum()) == decided


@pytest.mark.parametrize("n", [20, 300])
def test_a_model_without_segments_writes_scored_records_without_them(catalog: SchemaCatalog, tmp_path: Path,
                                                                     generator, n: int) -> None:  # type: ignore[no-untyped-def]
    from driftline.schemas.codec import decode

    model = model_with(tmp_path, segments=[])
    model.load()
    _, out, folder = scored_batch(catalog, model, generator, n)
    assert out.scored and all(decode(catalog, r.value, fast=True)[1]["segments"] is None for r in out.scored)
    assert folder.current is not None and folder.current.segments == {}


def label_batches(rng: np.random.Generator, tpr_b: float, n: int = 2_000) -> bytes:
    from driftline.streams.core.quality import LabelBatcher

    batcher = LabelBatcher()
    for i in range(n):
        group = "A" if i % 2 else "B"
        truth = rng.random() < 0.5
        caught = rng.random() < (0.8 if group == "A" else tpr_b)
        score = 0.9 if (truth and caught) or (not truth and rng.random() < 0.1) else 0.1
        batcher.label("fraud", "1", "champion", "binary_classification", 0.5, score, float(truth),
                      segments=f"{group}\x1fweb" if i % 50 else None, fields=("country", "channel"))
    (batch,) = batcher.take()
    return batch.to_bytes()


def test_labeled_windows_give_quality_per_segment_and_an_equal_opportunity_alert() -> None:
    from driftline.streams.core.quality import QualityMonitor, read_label_batch

    monitor = QualityMonitor(2_000, ALPHA, 0.05, "hddm_a", bias_bound=0.1)
    rng = np.random.default_rng(11)
    fair = monitor.apply(read_label_batch(json.loads(label_batches(rng, 0.8))), 0)
    segments = {name: counts for _, name, counts in fair.segments}
    country, channel = segments["country"], segments["channel"]
    assert country.values == (MISSING, "A", "B") and channel.values == (MISSING, "web")
    assert country.total == 2_000 and not [a for a in fair.alerts if a.kind == "bias"]
    state = json.loads(json.dumps(monitor.snapshot("fraud")))
    restored = QualityMonitor(2_000, ALPHA, 0.05, "hddm_a", bias_bound=0.1)
    restored.restore("fraud", state)
    alerts = []
    for m in (monitor, restored):
        got = []
        r = np.random.default_rng(12)
        for _ in range(2):
            got += [a for a in m.apply(read_label_batch(json.loads(label_batches(r, 0.4))), 1).alerts
                    if a.kind == "bias"]
        alerts.append(got)
    assert [(a.feature, a.statistic) for a in alerts[0]] == [("country", "equal_opportunity_difference")]
    assert [a.id for a in alerts[1]] == [a.id for a in alerts[0]]  # a restored monitor decides the same
    old = {k: v for k, v in state.items() if k not in ("segments", "segment_labels", "bias")}
    QualityMonitor(2_000, ALPHA, 0.05, "hddm_a").restore("fraud", old)  # states written before segments


def test_segment_metrics_are_bounded_and_drop_values_no_longer_shown() -> None:
    from prometheus_client import CollectorRegistry

    from driftline.streams.metrics import Metrics

    metrics = Metrics(CollectorRegistry(), segment_values=3)
    many = SegmentCounts.fold(np.array([f"v{i % 9}" for i in range(900)], dtype=object), np.arange(900) % 3 == 0)
    metrics.observe_segments("fraud", "country", many, labeled=False)
    shown = {s.labels["value"] for m in metrics.registry.collect() if m.name == "driftline_segment_requests"
             for s in m.samples}
    assert len(shown) == 3 and OTHER in shown
    few = SegmentCounts.fold(np.array(["x", "y"] * 10, dtype=object), np.arange(20) % 2 == 0)
    metrics.observe_segments("fraud", "country", few, labeled=False)
    shown = {s.labels["value"]: s.value for m in metrics.registry.collect()
             if m.name == "driftline_segment_positive_rate" for s in m.samples}
    assert shown == {"x": 1.0, "y": 0.0}
    value = metrics.registry.get_sample_value("driftline_bias_disparity", {
        "model": "fraud", "segment": "country", "statistic": "demographic_parity_difference"})
    assert value == 1.0


def test_odd_segment_values_cost_their_own_group_never_the_window() -> None:
    """Empty, unprintable, separator-bearing or 201-character values are valid requests: the window's sketch
    must still be read by the drift agent (one such request used to make it reject the whole sketch)."""
    from driftline.detectors.fairness import MISSING, OTHER, SegmentCounts, join_values, segment_text, split_values
    from driftline.detectors.sketch import WindowSketch
    from driftline.streams.core.drift import segment_from

    odd = ["", "US\x1fweb", "\u202eSU", "x" * 201, "\ud800", "DE"]
    values = np.array(odd + ["US"], dtype=object)
    counts = SegmentCounts.fold(values, np.ones(len(values), dtype=bool))
    assert {MISSING, OTHER, "DE", "US"} <= set(counts.values)
    assert int(counts.counts[:, 0].sum()) == len(values)  # every request counted somewhere
    sketch = WindowSketch("m", "1", 0, 1, {}, None, segments={"country": counts})  # type: ignore[arg-type]
    assert segment_from(json.loads(json.dumps(sketch.segments["country"].to_dict())), "country").values == \
        counts.values
    # the labeled side splits what the scored record joined: a value carrying the separator stays one value
    joined = join_values([segment_text(values), segment_text(values)])
    first, second = split_values(list(joined), 2)
    assert first.tolist() == second.tolist() and MISSING not in first.tolist()[1:2]
