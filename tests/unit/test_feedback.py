"""Labels: the join, quality against scikit-learn, concept drift, and the label-free estimate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from detectors.concept import DETECTION_BOUND, KINDS, ConceptDetector
from detectors.estimate import Calibration, estimate
from detectors.quality import QualitySketch, accuracy_drop
from streams.feedback import FeedbackJoin, Label, Scored

TTL = 60_000


def scored(rid: str) -> Scored:
    return Scored(rid, "fraud", "1", "champion", 0.7, "fraud", 1_000)


def label(rid: str, at: int = 5_000) -> Label:
    return Label(rid, "fraud", None, at)


def test_join_late_duplicate_early_and_unmatched_labels_reconcile() -> None:
    j = FeedbackJoin(TTL)
    assert j.add_prediction(scored("a"), 0) == [] and j.add_prediction(scored("b"), 0) == []
    (ja,) = j.add_label(label("a"), 30_000)  # late but within the TTL
    assert ja.scored.request_id == "a" and ja.label_delay_ms == 4_000
    assert j.add_label(label("a"), 31_000) == []  # duplicate: counted once
    assert j.add_label(label("c"), 32_000) == []  # before its prediction: waits
    (jc,) = j.add_prediction(scored("c"), 33_000)
    assert jc.label.request_id == "c"
    assert j.add_prediction(scored("c"), 34_000) == []  # scored twice after a restart: first wins
    assert j.add_label(label("x"), 35_000) == []  # its prediction never comes
    assert j.expire(70_000) == []  # "b" expires (no label), "x" has waited 35 s only
    (lost,) = j.expire(95_001)
    assert lost.request_id == "x"
    assert j.add_label(label("b"), 96_000) == []  # its prediction expired: waits, then no_prediction
    assert [x.request_id for x in j.expire(200_000)] == ["b"]
    # A shadow version scored the same request: the label joins both, whichever arrives first.
    assert j.add_prediction(scored("s"), 200_000) == []
    shadow = Scored("s", "fraud", "2", "shadow", 0.4, "legit", 1_000)
    assert j.add_prediction(shadow, 200_001) == []
    assert {(x.scored.version, x.scored.variant) for x in j.add_label(label("s"), 200_002)} == \
        {("1", "champion"), ("2", "shadow")}
    late_shadow = Scored("a2", "fraud", "2", "shadow", 0.4, "legit", 1_000)
    assert j.add_prediction(scored("a2"), 200_003) == [] and len(j.add_label(label("a2"), 200_004)) == 1
    assert [x.scored.variant for x in j.add_prediction(late_shadow, 200_005)] == ["shadow"]
    assert j.add_prediction(late_shadow, 200_006) == []  # once
    c = j.counts
    assert (c.labels, c.joined, c.duplicates, c.unmatched, c.duplicate_predictions, c.expired_predictions) == \
        (7, 4, 1, 2, 2, 1)
    assert c.labels == c.joined + c.duplicates + c.unmatched + len(j.waiting)


def test_quality_equals_scikit_learn_and_merges() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(5000) < 0.3
    p = np.clip(y * 0.35 + rng.random(5000) * 0.65, 0, 1)
    q = QualitySketch.of_classifier(y[:2000], p[:2000], 0.5) + QualitySketch.of_classifier(y[2000:], p[2000:], 0.5)
    pred = p >= 0.5
    assert q.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert q.precision == pytest.approx(skm.precision_score(y, pred))
    assert q.recall == pytest.approx(skm.recall_score(y, pred))
    assert q.f1 == pytest.approx(skm.f1_score(y, pred))
    assert q.log_loss == pytest.approx(skm.log_loss(y, p))
    t = rng.normal(size=3000)
    f = t + rng.normal(scale=0.3, size=3000)
    r = QualitySketch.of_regressor(t, f)
    assert r.mae == pytest.approx(skm.mean_absolute_error(t, f))
    assert r.rmse == pytest.approx(np.sqrt(skm.mean_squared_error(t, f)))
    assert QualitySketch.from_dict(q.to_dict()) == q


def test_accuracy_drop_is_sample_size_aware() -> None:
    small = QualitySketch(n=50, tp=20, tn=20, fp=5, fn=5)  # 80 % on 50 labels vs 85 % reference
    big = QualitySketch(n=5000, tp=2000, tn=2000, fp=500, fn=500)  # 80 % on 5,000 labels
    assert accuracy_drop(0.85, small, 0.01)[0] > 0.01
    assert accuracy_drop(0.85, big, 0.01)[0] < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_concept_drift_detected_after_a_rule_change_and_not_on_a_stable_stream(kind: str) -> None:
    """Error rate 10 % → 35 % after 5,000 labeled events: detected within DETECTION_BOUND[kind] labeled events
    (500 for HDDM and ADWIN, 2,000 for DDM, 5,000 for EDDM); 20,000 stable events: no detection. 10 seeds."""
    false_alarms = 0
    delays = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        stable = ConceptDetector(kind)
        false_alarms += stable.update_many(rng.random(20_000) < 0.10) is not None
        d = ConceptDetector(kind)
        assert d.update_many(rng.random(5_000) < 0.10) is None
        at = d.update_many(rng.random(8_000) < 0.35)
        assert at is not None, f"{kind} missed the change (seed {seed})"
        delays.append(at)
    assert max(delays) <= DETECTION_BOUND[kind], delays
    assert false_alarms == 0


def test_label_free_estimate_tracks_real_accuracy_without_concept_drift() -> None:
    """An uncalibrated model (scores squeezed towards 0.5): calibrated on reference, within 2 points per window."""
    rng = np.random.default_rng(11)

    def stream(n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(shift, 1.0, n)
        truth = 1 / (1 + np.exp(-2 * x))
        y = rng.random(n) < truth
        score = 0.5 + (truth - 0.5) * 0.4  # badly calibrated, same ranking
        return score, y

    ref_s, ref_y = stream(20_000)
    cal = Calibration.fit(ref_s, ref_y)
    assert Calibration.from_dict(cal.to_dict()).apply(ref_s[:10]).tolist() == cal.apply(ref_s[:10]).tolist()
    for shift in (0.0, 0.5, -0.7):  # covariate shift is fine; the label rule is unchanged
        s, y = stream(5_000, shift)
        real = ((s >= 0.5) == y).mean()
        est = estimate(cal.apply(s), 0.5)["accuracy"]
        assert abs(est - real) < 0.02, (shift, est, real)


def test_folding_one_event_at_a_time_equals_the_vectorised_sketch() -> None:
    rng = np.random.default_rng(5)
    y = rng.random(700) < 0.2
    p = rng.random(700)
    one = QualitySketch()
    wrong = [one.add_decision(bool(t), float(s), 0.5) for t, s in zip(y, p, strict=True)]
    whole = QualitySketch.of_classifier(y, p, 0.5)
    assert (one.n, one.tp, one.fp, one.tn, one.fn) == (whole.n, whole.tp, whole.fp, whole.tn, whole.fn)
    assert one.log_loss_sum == pytest.approx(whole.log_loss_sum)
    assert sum(wrong) == whole.fp + whole.fn
    t, f = rng.normal(size=300), rng.normal(size=300)
    r = QualitySketch()
    for a, b in zip(t, f, strict=True):
        r.add_error(float(a), float(b))
    assert r.mae == pytest.approx(QualitySketch.of_regressor(t, f).mae)
    assert r.rmse == pytest.approx(QualitySketch.of_regressor(t, f).rmse)
