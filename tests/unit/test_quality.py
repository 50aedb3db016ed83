"""Quality state per model: label batches, the monitor's verdicts, and state that resumes exactly.

The quality monitor (windows, baselines, open incidents, River concept
detectors, the CBPE calibration, the DLE loss model and their estimate
windows) is restored from its
snapshot, through JSON as it travels on ``{ns}.drift-state``; a monitor
restored mid-stream must decide exactly as one that never stopped.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.detectors.concept import KINDS, ConceptDetector
from driftline.detectors.estimate import Calibration, estimate
from driftline.detectors.loss import LossEstimate, LossModel
from driftline.streams.core.drift import DriftMonitor
from driftline.streams.core.poison import BadRecord, Skip
from driftline.streams.core.quality import (
    LabelBatch,
    LabelBatcher,
    QualityMonitor,
    Verdicts,
    parse_sketches_record,
    read_label_batch,
    resume_quality,
)
from tests.garbage import garbage, json_values

WINDOW = 300
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def monitor() -> QualityMonitor:
    return QualityMonitor(WINDOW, 0.01, 0.05, "hddm_a", known=lambda m, v: m == "fraud" and v in ("1", "2"))


def batches(seed: int, n_batches: int, error_from: int, rate_before: float = 0.05,
            rate_after: float = 0.35) -> list[LabelBatch]:
    """Batches of 100 labeled events and 150 predictions of fraud v1; the error rate rises at batch ``error_from``."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        batcher = LabelBatcher()
        rate = rate_before if b < error_from else rate_after
        scores = rng.random(100)
        truth = (scores >= 0.5) ^ (rng.random(100) < rate)
        for s, y in zip(scores.tolist(), truth.tolist(), strict=True):
            batcher.label("fraud", "1", "champion", "binary_classification", 0.5, s, float(y))
        for s in rng.random(150).tolist():
            batcher.score("fraud", "1", "champion", "binary_classification", 0.5, s)
        [batch] = batcher.take()
        out.append(read_label_batch(json.loads(batch.to_bytes())))  # as it travels
    return out


def verdicts(m: QualityMonitor, stream: list[LabelBatch], first: int = 0) -> list[tuple[Any, ...]]:
    """What each batch decided, comparable across monitors (alert ids hash the time: batch i comes at i s)."""
    out = []
    for i, batch in enumerate(stream, start=first):
        v: Verdicts = m.apply(batch, now_ms=1_000 * i)
        out.append((
            [(c.key, c.window.n, c.window.accuracy, c.estimate_gap) for c in v.closed],
            [(k, e.items()) for k, e in v.estimates],
            [(a.kind, a.id, a.value, a.threshold, a.sample_size) for a in v.alerts],
            [(r.id, r.reason) for r in v.retrains],
        ))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_a_concept_detector_restored_from_its_snapshot_goes_on_exactly(kind: str) -> None:
    rng = np.random.default_rng(3)
    a = ConceptDetector(kind)
    a.update_many(rng.random(4_000) < 0.1)
    b = ConceptDetector.restore(json.loads(json.dumps(a.snapshot())))
    assert (b.seen, b.changes) == (a.seen, a.changes)
    after = rng.random(6_000) < 0.35
    assert [a.update(e) for e in after] == [b.update(e) for e in after]
    assert a.changes >= 1  # the comparison covered a change point


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_a_detector_state_naming_anything_but_river_is_refused() -> None:
    good = ConceptDetector("ddm").snapshot()
    evil = {**good, "state": base64.b64encode(pickle.dumps(_Boom())).decode()}
    with pytest.raises(ValueError, match="not a River detector"):
        ConceptDetector.restore(evil)
    other = {**good, "state": ConceptDetector("hddm_a").snapshot()["state"]}  # a River detector of another kind
    with pytest.raises(ValueError, match="not a ddm detector"):
        ConceptDetector.restore(other)
    for bad in ({**good, "state": "%%%"}, {**good, "seen": -1}, {**good, "kind": "x"}, [], None):
        with pytest.raises(ValueError):
            ConceptDetector.restore(bad)


def test_a_monitor_restored_mid_stream_decides_as_one_that_never_stopped() -> None:
    """30 batches, the error rate rises at batch 15; a restart after batch 12 (mid-window) changes nothing.

    A fresh monitor at that point (what an unsaved state gives) misses the drop: its baseline is set by the
    first window after the restart, which is already the worse one.
    """
    stream = batches(seed=5, n_batches=30, error_from=15)
    whole = verdicts(monitor(), stream)
    first = monitor()
    before = verdicts(first, stream[:12])
    state = json.loads(json.dumps(first.snapshot("fraud")))
    resumed = monitor()
    resumed.restore("fraud", state)
    assert before + verdicts(resumed, stream[12:], first=12) == whole
    kinds = [a[0] for b in whole for a in b[2]]
    assert kinds.count("performance_drop") == 1 and "concept_drift" in kinds
    assert any(b[1] for b in whole[:12]), "the estimate was calibrated and ran before the restart"
    fresh = [a[0] for b in verdicts(monitor(), stream[15:], first=15) for a in b[2]]
    assert "performance_drop" not in fresh


def test_the_estimate_from_bin_counts_equals_the_estimate_from_scores() -> None:
    rng = np.random.default_rng(9)
    m = monitor()
    for batch in batches(seed=9, n_batches=3, error_from=99):  # calibrates on the first 300 labels
        m.apply(batch, 0)
    cal = m.models["fraud"].calibration["1"]
    m.models["fraud"].unlabeled.clear()
    scores = rng.random(2 * WINDOW + 17)
    batcher = LabelBatcher()
    for s in scores.tolist():
        batcher.score("fraud", "1", "champion", "binary_classification", 0.5, s)
    got = m.apply(batcher.take()[0], 0).estimates
    want = [estimate(cal.apply(scores[i * WINDOW:(i + 1) * WINDOW]), 0.5) for i in range(2)]
    assert [e for _, e in got] == pytest.approx(want)
    assert int(m.models["fraud"].unlabeled[("1", "champion")].sum()) == 17
    assert isinstance(cal, Calibration)


def test_regressors_and_shadows() -> None:
    """A regressor's windows close on targets; a shadow is judged but never calibrates nor requests a retrain."""
    m = monitor()
    batcher = LabelBatcher()
    for i in range(WINDOW):
        batcher.label("fraud", "1", "champion", "regression", 0.0, float(i), float(i) + 0.5)
        batcher.label("fraud", "2", "shadow", "binary_classification", 0.5, 0.9, 1.0)
    v = m.apply(batcher.take()[0], 0)
    assert sorted((c.key, c.task) for c in v.closed) == [(("fraud", "1", "champion"), "regression"),
                                                         (("fraud", "2", "shadow"), "binary_classification")]
    assert m.models["fraud"].calibration == {} and not v.retrains


def test_label_batches_round_trip_and_refuse_what_no_feedback_member_writes() -> None:
    [batch] = batches(seed=1, n_batches=1, error_from=0)
    again = read_label_batch(json.loads(batch.to_bytes()))
    assert again.model == batch.model and np.array_equal(again.labeled[0].scores, batch.labeled[0].scores)
    good = json.loads(batch.to_bytes())
    nan = base64.b64encode(np.array([np.nan]).tobytes()).decode()
    scores = np.frombuffer(base64.b64decode(good["labeled"][0]["scores"])).copy()
    scores[0] = 1e200  # finite, but its square is not
    huge = base64.b64encode(scores.tobytes()).decode()
    for bad in ({**good, "model": ""}, {**good, "labeled": [{**good["labeled"][0], "variant": "boss"}]},
                {**good, "labeled": [{**good["labeled"][0], "outcomes": nan}]},
                {**good, "labeled": [{**good["labeled"][0], "scores": huge}]},
                {**good, "labeled": [{**good["labeled"][0], "scores": "AAAA"}]},
                {**good, "predictions": [{**good["predictions"][0], "threshold": float("inf")}]},
                {**good, "labeled": {}}, {"kind": "labels"}):
        with pytest.raises(BadRecord):
            read_label_batch(bad)


def test_the_sketches_topic_reader_tells_label_batches_from_sketches_and_refuses_unknown_versions() -> None:
    drift = DriftMonitor({}, config=None, grace_ms=0)  # type: ignore[arg-type]
    [batch] = batches(seed=2, n_batches=1, error_from=0)
    assert isinstance(parse_sketches_record(batch.to_bytes(), drift, monitor(), 0), LabelBatch)
    other = json.loads(batch.to_bytes())
    other["labeled"][0]["version"] = "7"
    got = parse_sketches_record(json.dumps(other).encode(), drift, monitor(), 0)
    assert isinstance(got, Skip) and got.reason == "unknown_model"


@FEW
@given(value=garbage())
def test_the_sketches_topic_reader_never_raises(value: bytes | None) -> None:
    drift = DriftMonitor({}, config=None, grace_ms=0)  # type: ignore[arg-type]
    got = parse_sketches_record(value, drift, monitor(), 0)
    assert isinstance(got, Skip)


def resumes_or_refuses(target: QualityMonitor, model: str, state: dict[str, Any]) -> None:
    """A state record either restores (a replaced part that happened to be valid) or is refused, changing nothing."""
    got = resume_quality(target, model, json.dumps({"quality": state}).encode())
    if got is None:
        assert model in target.models
    else:
        assert isinstance(got, Skip) and got.reason == "invalid_state" and target.models == {}


@FEW
@given(state=json_values, where=st.sampled_from(["policy", "calibration", "calibration_data", "unlabeled",
                                                  "estimates", "requested", "format"]))
def test_a_broken_quality_state_is_refused_and_changes_nothing(state: Any, where: str) -> None:
    m = monitor()
    for batch in batches(seed=4, n_batches=4, error_from=99):
        m.apply(batch, 0)
    target = monitor()
    resumes_or_refuses(target, "fraud", {**m.snapshot("fraud"), where: state})
    assert resume_quality(target, "fraud", json.dumps({"format": 1}).encode()) is None  # written before: fresh


def test_a_state_holding_another_models_windows_is_refused() -> None:
    m = monitor()
    for batch in batches(seed=4, n_batches=4, error_from=99):
        m.apply(batch, 0)
    with pytest.raises(BadRecord, match="another model"):
        monitor().restore("credit", m.snapshot("fraud"))


# -- regressors: direct loss estimation --------------------------------------------------------------


def regressor_monitor() -> QualityMonitor:
    return QualityMonitor(WINDOW, 0.01, 0.05, "hddm_a", known=lambda m, v: m == "housing" and v == "1")


def regressor_rows(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets whose error's scale grows with the prediction (0.3 → 1.8)."""
    f = rng.normal(shift, 1.0, n)
    return f, f + rng.normal(0.0, 1.0, n) * (0.3 + 1.5 / (1 + np.exp(-2 * f)))


def regressor_batches(seed: int, n_batches: int, shift_from: int, variant: str = "champion") -> list[LabelBatch]:
    """Batches of 100 labeled events and 150 predictions of housing v1; predictions move up 1 sd at ``shift_from``.

    Returns the batches as they travel; the labeled rows of batch i are those of its predictions' distribution.
    """
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        shift = 0.0 if b < shift_from else 1.0
        batcher = LabelBatcher()
        f, y = regressor_rows(rng, 100, shift)
        for p, t in zip(f.tolist(), y.tolist(), strict=True):
            batcher.label("housing", "1", variant, "regression", 0.5, p, t)
        for p in rng.normal(shift, 1.0, 150).tolist():
            batcher.score("housing", "1", variant, "regression", 0.5, p)
        [batch] = batcher.take()
        out.append(read_label_batch(json.loads(batch.to_bytes())))
    return out


def test_a_regressor_fits_its_loss_model_on_its_first_window_and_estimates_from_bin_counts() -> None:
    stream = regressor_batches(seed=9, n_batches=3, shift_from=99)
    m = regressor_monitor()
    for batch in stream:
        m.apply(batch, 0)
    loss = m.models["housing"].loss["1"]
    first_f = np.concatenate([g.scores for b in stream for g in b.labeled])[:WINDOW]
    first_y = np.concatenate([g.outcomes for b in stream for g in b.labeled])[:WINDOW]
    want = LossModel.fit(first_f, first_y, bins=10)
    assert np.array_equal(loss.edges, want.edges) and np.allclose(loss.abs_error, want.abs_error)
    assert m.models["housing"].calibration == {} and m.models["housing"].loss_data == {}
    m.models["housing"].loss_unlabeled.clear()
    predictions = np.random.default_rng(9).normal(1.0, 1.0, 2 * WINDOW + 17)
    batcher = LabelBatcher()
    for p in predictions.tolist():
        batcher.score("housing", "1", "champion", "regression", 0.5, p)
    got = m.apply(batcher.take()[0], 0).estimates
    assert [k for k, _ in got] == [("housing", "1", "champion")] * 2
    assert all(isinstance(e, LossEstimate) for _, e in got)
    expected = [loss.estimate(predictions[i * WINDOW:(i + 1) * WINDOW]) for i in range(2)]
    assert [x for _, e in got for _, x in e.items()] == pytest.approx([x for e in expected for _, x in e.items()])
    assert int(m.models["housing"].loss_unlabeled[("1", "champion")].sum()) == 17


def test_the_monitor_estimates_a_regressors_shift_and_reports_the_gap_when_labels_come() -> None:
    """15 seeds: 3 batches unshifted (the loss model's window), then 12 shifted; windows of 300.

    The gap reported when a labeled window closes is the last estimate minus its MAE. From batch 6 on, the
    last estimate's window holds shifted predictions only: it is compared with the realised MAE and RMSE of
    the labeled window that closes (same distribution, other rows).
    """
    rel_mae, rel_rmse, moved = [], [], []
    for seed in range(15):
        m = regressor_monitor()
        stream = regressor_batches(seed=seed, n_batches=15, shift_from=3)
        last: LossEstimate | None = None
        baseline = None
        for i, batch in enumerate(stream):
            v = m.apply(batch, 1_000 * i)
            for c in v.closed:
                if baseline is None:
                    baseline = c.window.mae
                    assert c.estimate_gap is None  # no estimate before the loss model was fitted
                elif last is not None:
                    assert c.estimate_gap == pytest.approx(last.mae - c.window.mae)
                    if i < 6:
                        continue
                    rel_mae.append(last.mae / c.window.mae - 1)
                    rel_rmse.append(last.rmse / c.window.rmse - 1)
                    moved.append(last.mae / baseline)
            for _, e in v.estimates:
                assert isinstance(e, LossEstimate)
                last = e
    assert len(rel_mae) >= 40
    # 300-row windows on both sides: each comparison scatters about 8 %; the means over 40+ must be near 0
    assert abs(np.mean(rel_mae)) < 0.05 and abs(np.mean(rel_rmse)) < 0.05, (np.mean(rel_mae), np.mean(rel_rmse))
    assert np.quantile(np.abs(rel_mae), 0.95) < 0.25
    assert min(moved) > 1.1 and np.mean(moved) > 1.25, (min(moved), np.mean(moved))


def test_a_regressor_monitor_restored_mid_stream_decides_as_one_that_never_stopped() -> None:
    stream = regressor_batches(seed=5, n_batches=14, shift_from=6)
    whole = verdicts(regressor_monitor(), stream)
    first = regressor_monitor()
    before = verdicts(first, stream[:7])
    state = json.loads(json.dumps(first.snapshot("housing")))
    assert state["loss"] and state["loss_unlabeled"], "the loss model and an open estimate window are saved"
    resumed = regressor_monitor()
    resumed.restore("housing", state)
    assert before + verdicts(resumed, stream[7:], first=7) == whole
    assert sum(len(b[1]) for b in whole) >= 6
    early = regressor_monitor()
    verdicts(early, stream[:2])  # mid-fit: 200 of the 300 rows the loss model needs
    half = json.loads(json.dumps(early.snapshot("housing")))
    assert len(half["loss_data"][0][1]) == 200
    again = regressor_monitor()
    again.restore("housing", half)
    assert verdicts(again, stream[2:], first=2) == whole[2:]


def test_a_shadow_regressor_never_fits_a_loss_model() -> None:
    m = regressor_monitor()
    for batch in regressor_batches(seed=1, n_batches=4, shift_from=99, variant="shadow"):
        assert m.apply(batch, 0).estimates == ()
    assert m.models["housing"].loss == {}


def test_prediction_groups_name_their_task_and_old_ones_are_a_classifiers() -> None:
    [batch] = regressor_batches(seed=1, n_batches=1, shift_from=99)
    assert [g.task for g in batch.predictions] == ["regression"]
    good = json.loads(batch.to_bytes())
    old = {**good, "predictions": [{k: v for k, v in good["predictions"][0].items() if k != "task"}]}
    assert [g.task for g in read_label_batch(old).predictions] == ["binary_classification"]
    for bad_task in ("ranking", None, 1, ["regression"]):
        with pytest.raises(BadRecord, match="task"):
            read_label_batch({**good, "predictions": [{**good["predictions"][0], "task": bad_task}]})


def test_a_snapshot_written_before_dle_restores() -> None:
    m = monitor()
    for batch in batches(seed=4, n_batches=4, error_from=99):
        m.apply(batch, 0)
    old = {k: v for k, v in m.snapshot("fraud").items() if not k.startswith("loss")}
    target = monitor()
    target.restore("fraud", json.loads(json.dumps(old)))
    assert target.snapshot("fraud") == m.snapshot("fraud")


def regressor_state() -> dict[str, Any]:
    m = regressor_monitor()
    for batch in regressor_batches(seed=4, n_batches=5, shift_from=99):
        m.apply(batch, 0)
    early = regressor_monitor()
    early.apply(regressor_batches(seed=4, n_batches=1, shift_from=99)[0], 0)
    state = json.loads(json.dumps(m.snapshot("housing")))
    state["loss_data"] = json.loads(json.dumps(early.snapshot("housing")))["loss_data"]
    assert state["loss"] and state["loss_data"] and state["loss_unlabeled"]
    return state


def test_broken_loss_states_are_refused() -> None:
    good = regressor_state()
    regressor_monitor().restore("housing", good)
    (v, model), = good["loss"]
    (_, var, counts), = good["loss_unlabeled"]
    (_, preds, targets), = good["loss_data"]
    for where, value in [
        ("loss", [[v, {**model, "abs_error": [-1.0] * len(model["abs_error"])}]]),
        ("loss", [[v, {**model, "edges": model["edges"][::-1]}]]),
        ("loss", [[v, {**model, "sq_error": model["sq_error"][:-1]}]]),
        ("loss", [["", model]]),
        ("loss", [[v, {"edges": []}]]),
        ("loss_unlabeled", [["2", var, counts]]),  # no loss model for that version
        ("loss_unlabeled", [[v, var, counts[:-1]]]),
        ("loss_unlabeled", [[v, var, [-1] * len(counts)]]),
        ("loss_unlabeled", [[v, "boss", counts]]),
        ("loss_unlabeled", [[v, var, [c + 10**6 for c in counts]]]),  # a full window would have closed
        ("loss_data", [[v, preds * 10**3, targets * 10**3]]),  # longer than the fitting window
        ("loss_data", [[v, preds, targets[:-1]]]),
        ("loss_data", [[v, preds, [True] * len(preds)]]),
        ("loss_data", [[v, preds[:-1] + [float("nan")], targets]]),
        ("loss_data", {"v": 1}),
    ]:
        target = regressor_monitor()
        with pytest.raises(BadRecord) as refused:
            target.restore("housing", {**good, where: value})
        assert refused.value.reason == "invalid_state" and target.models == {}, (where, value)


@FEW
@given(state=json_values, where=st.sampled_from(["loss", "loss_data", "loss_unlabeled"]))
def test_a_broken_loss_state_is_refused_and_changes_nothing(state: Any, where: str) -> None:
    resumes_or_refuses(regressor_monitor(), "housing", {**regressor_state(), where: state})


def test_counts_past_int64_in_a_saved_estimate_window_are_refused_not_raised() -> None:
    m = monitor()
    for batch in batches(seed=4, n_batches=3, error_from=99):  # 450 predictions: an open window of 150
        m.apply(batch, 0)
    state = json.loads(json.dumps(m.snapshot("fraud")))
    state["unlabeled"][0][2][0] = 10**30
    target = monitor()
    got = resume_quality(target, "fraud", json.dumps({"quality": state}).encode())
    assert isinstance(got, Skip) and got.reason == "invalid_state" and target.models == {}
