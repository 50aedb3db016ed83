"""Labels: the join, quality against scikit-learn, concept drift, and the label-free estimate."""

from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn import metrics as skm

from driftline.detectors.concept import DETECTION_BOUND, KINDS, ConceptDetector
from driftline.detectors.estimate import Calibration, estimate
from driftline.detectors.loss import LossEstimate
from driftline.detectors.quality import QualitySketch, accuracy_drop
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode
from driftline.streams.app.drift import observe_quality
from driftline.streams.app.feedback import FeedbackAgent, FeedbackLoop
from driftline.streams.core.join import (
    EXPIRE_CHUNK,
    STATE_LABEL,
    STATE_PREDICTIONS,
    FeedbackJoin,
    Label,
    Scored,
    StateRecord,
    Waiting,
    decode_state,
    encode_state,
    entry_bytes,
)
from driftline.streams.core.pipeline import OutRecord, RawMessage, ServedModel
from driftline.streams.core.quality import ClosedWindow, Verdicts, read_label_batch
from driftline.streams.metrics import Metrics
from driftline.streams.settings import load_settings

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
        est = estimate(cal.apply(s), 0.5).accuracy
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


# -- bounds, incremental expiry, partitions and the state records (issues 6 and 7) --------------------------------


def waiting_label(rid: str, value: bytes = b"v" * 50) -> Label:
    return Label(rid, "fraud", None, 5_000, (rid.encode(), value))


def reconciles(j: FeedbackJoin) -> bool:
    c = j.counts
    return c.labels + c.restored_labels == c.joined + c.duplicates + c.unmatched + c.overflow + len(j.waiting)


def test_a_full_join_evicts_its_oldest_entries_across_partitions() -> None:
    j = FeedbackJoin(TTL, max_entries=10)
    for i in range(6):  # predictions on partition 0 at 0..5 s, labels on partition 1 at 6..11 s
        j.add_prediction(scored(f"p{i}"), i * 1000, partition=0)
    for i in range(6):
        j.add_label(waiting_label(f"l{i}"), (6 + i) * 1000, partition=1)
    assert j.size == 10 and j.counts.evicted_predictions == 2  # p0 and p1 went first: the oldest
    assert j.take_overflowed() == []
    for i in range(6, 10):  # four more labels: p2..p5 go
        j.add_label(waiting_label(f"l{i}"), (6 + i) * 1000, partition=1)
    assert j.counts.evicted_predictions == 6 and j.held == {"predictions": 0, "labels": 10, "joined": 0}
    j.add_label(waiting_label("l10"), 16_000, partition=1)  # now the oldest are labels: evicted, handed back once
    (evicted,) = j.take_overflowed()
    assert evicted.request_id == "l0" and evicted.raw is not None and j.take_overflowed() == []
    assert j.counts.overflow == 1 and j.size == 10 and reconciles(j)
    assert j.add_prediction(scored("l1"), 17_000, partition=1)[0].label.request_id == "l1"  # the others still join
    assert reconciles(j)


def test_the_join_is_bounded_in_estimated_bytes() -> None:
    one = entry_bytes("r0000", Waiting(waiting_label("r0000", b"x" * 1000), 0))
    j = FeedbackJoin(TTL, max_entries=1_000_000, max_bytes=5 * one)
    for i in range(8):
        j.add_label(waiting_label(f"r{i:04d}", b"x" * 1000), i, partition=i % 2)
    assert j.bytes <= 5 * one and j.size == 5
    assert [lab.request_id for lab in j.take_overflowed()] == ["r0000", "r0001", "r0002"]
    assert j.bytes == sum(entry_bytes(rid, e) for _, rid, e in j.entries())
    small = FeedbackJoin(TTL, max_bytes=10 * one)
    small.add_prediction(Scored("big", "fraud", "1", "champion", 0.1, None, 0, b"f" * (20 * one)), 0)
    assert small.size == 0 and small.counts.evicted_predictions == 1  # one entry over the bound alone: evicted too


def test_the_clock_never_goes_backwards_so_the_oldest_stays_in_front() -> None:
    j = FeedbackJoin(TTL)
    j.add_label(waiting_label("a"), 50_000)
    j.add_label(waiting_label("b"), 40_000)  # the wall clock stepped back 10 s
    assert [e.at for _, _, e in j.entries()] == [50_000, 50_000]
    assert [lab.request_id for lab in j.expire(110_000)] == ["a", "b"]


def build_waiting(j: FeedbackJoin, n: int, partitions: int, at: int) -> None:
    """n waiting labels straight into the join's partitions (the public path costs ~4 µs an entry here: 8 s at 2M).

    One shared label: expire() only looks at each entry's key and insertion time.
    """
    label = waiting_label("shared")
    entry = Waiting(label, at)
    size = entry_bytes("r000000000", entry)
    for p in range(partitions):
        part = j._part(p)
        part.entries = OrderedDict.fromkeys((f"r{i:09d}" for i in range(p, n, partitions)), entry)
        part.held["labels"] = len(part.entries)
        part.bytes = size * len(part.entries)
        part.last_at = at
    j.held["labels"] = j.count = n
    j.bytes = size * n


def test_expire_does_work_proportional_to_what_expires_capped_per_call_at_2m_entries() -> None:
    """The old expire() scanned every entry each second (1.8 s at 2M, on the event loop); now a call takes
    from the front of each partition and stops at EXPIRE_CHUNK."""
    j = FeedbackJoin(TTL, max_entries=3_000_000)
    build_waiting(j, 2_000_000, partitions=4, at=1_000)
    examined = j.examined
    started = time.perf_counter()
    assert j.expire(1_000 + TTL - 1) == []  # nothing is due
    nothing_s = time.perf_counter() - started
    assert j.examined - examined == 4 and not j.behind  # one look per partition
    examined = j.examined
    started = time.perf_counter()
    expired = j.expire(1_000 + TTL)  # everything is due: one capped chunk
    chunk_s = time.perf_counter() - started
    assert len(expired) == EXPIRE_CHUNK and j.examined - examined == EXPIRE_CHUNK and j.behind
    assert j.size == 2_000_000 - EXPIRE_CHUNK and j.counts.unmatched == EXPIRE_CHUNK
    assert nothing_s < 0.05 and chunk_s < 0.5, (nothing_s, chunk_s)  # generous: shared CI cores
    assert len(j.take_changed()) == EXPIRE_CHUNK  # each expired label's state record gets a tombstone


def test_changes_restore_and_drop_by_partition() -> None:
    j = FeedbackJoin(TTL)
    j.add_label(waiting_label("a"), 1_000, partition=2)
    j.add_prediction(scored("b"), 2_000, partition=3)
    j.add_prediction(Scored("b", "fraud", "2", "shadow", 0.2, "legit", 1_000), 2_500, partition=3)
    assert j.take_changed() == [(2, "a"), (3, "b")] and j.take_changed() == []
    assert j.add_label(label("a"), 3_000, partition=3) == []  # another partition: not a's (a waits on 2)
    j.take_changed()
    assert len(j.add_label(label("b"), 4_000, partition=3)) == 2
    assert j.take_changed() == [(3, "b")] and j.waiting_entry(3, "b") is None  # joined: its state goes
    j.drop(2)
    assert not j.owns(2) and j.waiting_entry(2, "a") is None and j.held["labels"] == 1
    assert j.waiting_entry(3, "a") is not None  # the "a" of partition 3 stays
    assert j.bytes == sum(entry_bytes(rid, e) for _, rid, e in j.entries())
    r = FeedbackJoin(TTL)
    r.restore_label(2, waiting_label("a"), 1_000)  # read back with its own insertion time
    assert r.take_changed() == [] and r.counts.restored_labels == 1 and reconciles(r)
    assert r.expire(1_000 + TTL - 1) == [] and [x.request_id for x in r.expire(1_000 + TTL)] == ["a"]


def test_state_records_round_trip_and_refuse_garbage() -> None:
    for rec in (StateRecord(STATE_LABEL, "req-1", 1_767_225_600_123, (b"req-1", b"\x00\x00\x00\x00\x07body")),
                StateRecord(STATE_LABEL, "réq", 5, (None, b"")),
                StateRecord(STATE_PREDICTIONS, "r", -1, (b"a" * 300, b"b"))):
        key, value = encode_state(rec)
        assert key == rec.request_id.encode() and decode_state(key, value) == rec
    _, value = encode_state(StateRecord(STATE_PREDICTIONS, "r", 7, (b"abc",)))
    for bad in (b"", b"\x02" + value[1:], value[:-1], value + b"!", value[:1] + b"X" + value[2:]):
        with pytest.raises(ValueError, match="feedback state"):
            decode_state(b"r", bad)


# -- the agent's state records and the loop's offsets, with fake Kafka ends ----------------------------------------


def make_agent(catalog: SchemaCatalog, **overrides: object) -> FeedbackAgent:
    settings = load_settings(feedback=True, feedback_ttl_s=60, **overrides)
    return FeedbackAgent(settings, catalog, {}, Metrics(CollectorRegistry()))


def feedback_msg(agent: FeedbackAgent, catalog: SchemaCatalog, rid: str, offset: int, partition: int = 0) -> RawMessage:
    value = encode(catalog.latest("driftline.Feedback"),
                   {"request_id": rid, "label": "fraud", "target": None, "event_time": 7_000})
    return RawMessage(agent.feedback_topic, partition, offset, rid.encode(), value)


def scored_msg(agent: FeedbackAgent, catalog: SchemaCatalog, rid: str, offset: int, partition: int = 0,
               version: str = "1", variant: str = "champion") -> RawMessage:
    value = encode(catalog.latest("driftline.Scored"), {
        "request_id": rid, "model": "fraud", "model_version": version, "variant": variant, "score": 0.25,
        "predicted": "legit", "event_time": 1_000, "features": np.arange(26, dtype="<f4").tobytes()})
    return RawMessage(agent.scored_topic, partition, offset, rid.encode(), value)


def reasons(records: list[OutRecord]) -> list[bytes | None]:
    return [dict(r.headers or [])["driftline.errors.reason"] for r in records]


def test_waiting_entries_survive_a_restart_through_their_state_records(catalog: SchemaCatalog) -> None:
    """Issue 7: labels and predictions waiting at a crash come back, with their insertion times."""
    before = make_agent(catalog)
    msgs = [feedback_msg(before, catalog, f"lab-{i}", i, partition=i % 2) for i in range(4)]
    msgs += [scored_msg(before, catalog, "pred-0", 10, partition=1),
             scored_msg(before, catalog, "pred-0", 11, partition=1, version="2", variant="shadow")]
    assert before.process(msgs, 100_000) == []
    upserts, removed = before.state_changes()
    assert removed == [] and {r.topic for r in upserts} == {before.state_topic} and len(upserts) == 5
    state: dict[int, dict[bytes, bytes]] = {0: {}, 1: {}}
    for r in upserts:  # the partitioner puts a state record on its request's partition: here, the input's
        assert r.key is not None and r.value is not None
        state[1 if r.key in (b"lab-1", b"lab-3", b"pred-0") else 0][r.key] = r.value

    after = make_agent(catalog)
    after.restore(state)
    assert after.join.take_changed() == []  # nothing to write back
    assert sorted(after.join.waiting) == ["lab-0", "lab-1", "lab-2", "lab-3"]
    assert {(p, rid): e.at for p, rid, e in after.join.entries()} == \
        {(p, rid): e.at for p, rid, e in before.join.entries()}
    joined = after.process([feedback_msg(after, catalog, "pred-0", 12, partition=1)], 101_000)
    labeled = [decode(catalog, r.value)[1] for r in joined if r.topic == after.settings.topic("labeled")]
    assert sorted((x["model_version"], x["variant"]) for x in labeled) == [("1", "champion"), ("2", "shadow")]
    assert labeled[0]["features"] == np.arange(26, dtype="<f4").tobytes()
    dead = after.tick(100_000 + 60_000)  # the TTL runs from the original insertion time: no_prediction
    assert reasons(dead) == [b"no_prediction"] * 4
    assert sorted(r.value for r in dead) == sorted(m.value for m in msgs[:4])  # the original records
    upserts, removed = after.state_changes()  # joined or expired: their state records get tombstones
    assert upserts == [] and sorted(rid for _, rid in removed) == ["lab-0", "lab-1", "lab-2", "lab-3", "pred-0"]
    assert len(after.tombstones(removed)) == 5


def test_state_changes_then_tombstones_only_for_what_is_still_gone(catalog: SchemaCatalog) -> None:
    agent = make_agent(catalog)
    agent.process([feedback_msg(agent, catalog, "a", 1), feedback_msg(agent, catalog, "b", 2)], 1_000)
    agent.state_changes()
    agent.process([scored_msg(agent, catalog, "a", 3), scored_msg(agent, catalog, "b", 4)], 2_000)
    upserts, removed = agent.state_changes()
    assert upserts == [] and removed == [(0, "a"), (0, "b")]
    agent.join.drop(0)
    agent.join.assign(0)
    agent.process([feedback_msg(agent, catalog, "b", 5)], 3_000)  # waits again before the tombstones go out
    assert [(r.key, r.value) for r in agent.tombstones(removed)] == [(b"a", None)]
    agent.join.drop(0)
    assert agent.tombstones(removed) == []  # a partition moved away: its next owner has the state


def test_a_full_join_dead_letters_the_evicted_labels_as_join_overflow(catalog: SchemaCatalog) -> None:
    agent = make_agent(catalog, feedback_max_pending=100)
    agent.process([feedback_msg(agent, catalog, f"r{i}", i) for i in range(130)], 1_000)
    dead = agent.tick(1_000)
    assert reasons(dead) == [b"join_overflow"] * 30 and [r.key for r in dead] == [f"r{i}".encode() for i in range(30)]
    sample = agent.metrics.registry.get_sample_value
    assert sample("driftline_dead_letters_total", {"model": "-", "stage": "feedback", "reason": "join_overflow"}) == 30
    assert sample("driftline_labels_total", {"model": "-", "outcome": "join_overflow"}) == 30
    _, removed = agent.state_changes()
    assert len(agent.tombstones(removed)) == 30  # their state records go too
    agent.publish_sizes()
    assert sample("driftline_feedback_pending", {"kind": "labels"}) == 100


class FakeSource:
    """BatchSource's public face: scripted batches, an assignment, stored offsets recorded."""

    def __init__(self, assigned: set[tuple[str, int]]) -> None:
        self.assigned = assigned
        self.batches: list[list[RawMessage]] = []
        self.stored: list[list[int]] = []
        self.revoked_during_poll = False
        self.fatal_error: str | None = None

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[RawMessage]:
        return self.batches.pop(0) if self.batches else []

    def store_through(self, msgs: list[RawMessage]) -> None:
        self.stored.append([m.offset for m in msgs])


class FakeSink:
    """AckedSink's public face: tokens come back, in order, once the test acknowledges their records."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[OutRecord], object]] = []
        self.acked = 0
        self.returned = 0
        self.fatal_error: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self.sent) - self.returned

    def send(self, records: list[OutRecord], token: object) -> None:
        self.sent.append((list(records), token))

    def poll(self, timeout_s: float = 0.0) -> list[object]:
        tokens = [t for _, t in self.sent[self.returned:self.acked]]
        self.returned = max(self.returned, self.acked)
        return tokens

    def ack_all(self) -> None:
        self.acked = len(self.sent)


def test_offsets_are_stored_once_outputs_then_tombstones_are_acknowledged(catalog: SchemaCatalog) -> None:
    """Issue 7: the old consumer stored offsets as it consumed; now a batch waits for everything it caused."""
    agent = make_agent(catalog)
    source, sink = FakeSource({(agent.scored_topic, 0), (agent.feedback_topic, 0)}), FakeSink()
    loop = FeedbackLoop(agent, source, sink, {})  # type: ignore[arg-type]
    restored: list[list[int]] = []
    loop.read_state = lambda ps: restored.append(ps) or {p: {} for p in ps}  # type: ignore[method-assign,func-returns-value]
    source.batches = [[feedback_msg(agent, catalog, "a", 5)], [scored_msg(agent, catalog, "a", 9)],
                      [feedback_msg(agent, catalog, "z", 6)]]
    loop.step()
    assert restored == [[0]]  # partition 0 restored before its first record
    (records, _), = sink.sent
    assert [r.topic for r in records] == [agent.state_topic] and source.stored == []  # waits for the ack
    sink.ack_all()
    loop.step()  # joins "a": a labeled record now, its tombstone once that is acknowledged
    assert source.stored == [[5]]
    assert [r.topic for r in sink.sent[1][0]] == [agent.settings.topic("labeled")]
    loop.step()  # "z" waits; its batch is acknowledged before the tombstone of "a"
    sink.acked = 3
    loop.acknowledged(0)
    assert [(r.key, r.value) for r in sink.sent[3][0]] == [(b"a", None)]
    assert source.stored == [[5]]  # offset 9 waits for the tombstone, and offset 6 for offset 9
    assert loop.busy()
    sink.ack_all()
    assert not loop.busy()
    assert source.stored == [[5], [9], [6]]

    source.revoked_during_poll, source.assigned = True, set()  # a rebalance took partition 0
    loop.step()
    assert not agent.join.owns(0) and agent.join.size == 0


def test_a_regressors_predictions_and_targets_reach_the_quality_monitor(catalog: SchemaCatalog,
                                                                         housing_model: OnnxModel) -> None:
    """Its new predictions feed the label-free estimate (DLE) as a classifier's scores feed CBPE."""
    served = {"housing": ServedModel(housing_model, catalog, max_message_bytes=8192)}
    agent = FeedbackAgent(load_settings(feedback=True, feedback_ttl_s=60), catalog, served,
                          Metrics(CollectorRegistry()))
    scored_schema, feedback_schema = catalog.latest("driftline.Scored"), catalog.latest("driftline.Feedback")
    msgs = [RawMessage(agent.scored_topic, 0, i, f"r{i}".encode(), encode(scored_schema, {
        "request_id": f"r{i}", "model": "housing", "model_version": "1", "variant": "champion",
        "score": 100.0 + i, "predicted": None, "event_time": 1_000, "features": b""})) for i in range(3)]
    msgs.append(RawMessage(agent.feedback_topic, 0, 0, b"r0", encode(feedback_schema, {
        "request_id": "r0", "label": None, "target": 110.0, "event_time": 2_000})))
    agent.process(msgs, 3_000)
    [record] = agent.label_batches()
    batch = read_label_batch(json.loads(record.value or b""))
    assert batch.model == "housing" and record.key == b"housing"
    [predictions] = batch.predictions
    assert (predictions.task, predictions.version, predictions.scores.tolist()) == ("regression", "1",
                                                                                    [100.0, 101.0, 102.0])
    [labeled] = batch.labeled
    assert (labeled.task, labeled.scores.tolist(), labeled.outcomes.tolist()) == ("regression", [100.0], [110.0])


def test_a_regressors_estimate_and_its_gap_are_exported() -> None:
    metrics = Metrics(CollectorRegistry())
    key = ("housing", "1", "champion")
    window = QualitySketch.of_regressor(np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 2.0]))
    observe_quality(metrics, Verdicts(closed=(ClosedWindow(key, window, "regression", 0.25),),
                                      estimates=((key, LossEstimate(1.25, 1.5)),)))
    labels = dict(zip(("model", "version", "variant"), key, strict=True))
    got = {m: metrics.registry.get_sample_value("driftline_quality_estimate", {**labels, "metric": m})
           for m in ("mae", "rmse", "accuracy")}
    assert got == {"mae": 1.25, "rmse": 1.5, "accuracy": None}
    assert metrics.registry.get_sample_value("driftline_quality_estimate_gap", labels) == 0.25
    assert metrics.registry.get_sample_value("driftline_quality", {**labels, "metric": "mae"}) == 1.0
