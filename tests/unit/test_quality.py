"""Quality state per model: label batches, the monitor's verdicts, and state that resumes exactly.

The quality monitor (windows, baselines, open incidents, River concept
detectors, the CBPE calibration and estimate windows) is restored from its
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
            batcher.score("fraud", "1", "champion", 0.5, s)
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
            [(k, e.accuracy, e.f1) for k, e in v.estimates],
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
        batcher.score("fraud", "1", "champion", 0.5, s)
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
    for bad in ({**good, "model": ""}, {**good, "labeled": [{**good["labeled"][0], "variant": "boss"}]},
                {**good, "labeled": [{**good["labeled"][0], "outcomes": nan}]},
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


@FEW
@given(state=json_values, where=st.sampled_from(["policy", "calibration", "calibration_data", "unlabeled",
                                                  "estimates", "requested", "format"]))
def test_a_broken_quality_state_is_refused_and_changes_nothing(state: Any, where: str) -> None:
    m = monitor()
    for batch in batches(seed=4, n_batches=4, error_from=99):
        m.apply(batch, 0)
    good = m.snapshot("fraud")
    target = monitor()
    got = resume_quality(target, "fraud", json.dumps({"quality": {**good, where: state}}).encode())
    if got is None:  # the replacement happened to be valid
        assert "fraud" in target.models
    else:
        assert isinstance(got, Skip) and got.reason == "invalid_state" and target.models == {}
    assert resume_quality(target, "fraud", json.dumps({"format": 1}).encode()) is None  # written before: fresh


def test_a_state_holding_another_models_windows_is_refused() -> None:
    m = monitor()
    for batch in batches(seed=4, n_batches=4, error_from=99):
        m.apply(batch, 0)
    with pytest.raises(BadRecord, match="another model"):
        monitor().restore("credit", m.snapshot("fraud"))
