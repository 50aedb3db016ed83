"""Poison records: every reader's parse function skips what does not parse or validate, and never raises.

Property-based: generated garbage (arbitrary bytes, arbitrary JSON, JSON of
the right shape with one wrong field, deep nesting, huge numbers, non-UTF-8)
goes to the control-record, sketch, drift-state, retrain and alert readers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from driftline.detectors.policy import PolicyConfig
from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.deployment import Deployment
from driftline.inference.errors import ModelError
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import HEADER, MAGIC, encode, frame
from driftline.streams.app.rollout import bad_control_alert
from driftline.streams.core.drift import DriftMonitor, parse_sketch, resume
from driftline.streams.core.events import encode_event, format_event, read_event
from driftline.streams.core.poison import Skip, SkipLog
from driftline.streams.core.profiling import PROFILE_FILE, ProfileStore
from driftline.streams.kafka.control import ControlFollower, parse_deployment
from driftline.streams.metrics import Metrics
from driftline.streams.settings import EXAMPLE_MODELS
from driftline.streams.trainer.service import parse_labeled, parse_retrain
from tests.garbage import NAMED_POISON, garbage, json_values
from tests.helpers import StoredMessage

NOW = 1_767_225_700_000
SKEW_MS = 86_400_000
PROFILE = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- garbage -------------------------------------------------------------------------------------------------------


def wrong(valid: dict[str, Any], bad: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """``valid`` with one field replaced by a value its reader must refuse (or removed, when None is allowed)."""
    return st.sampled_from(sorted(bad)).flatmap(
        lambda k: bad[k].map(lambda v: json.dumps({**valid, k: v}, allow_nan=True).encode()))


def _is_name(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 200 and v.isprintable()


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


not_a_name = json_values.filter(lambda v: not _is_name(v))
not_a_count = json_values.filter(lambda v: not _is_count(v))
not_an_object = json_values.filter(lambda v: not isinstance(v, dict))
not_a_list = json_values.filter(lambda v: not isinstance(v, list))
not_a_number = json_values.filter(
    lambda v: isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)))


# -- control records ------------------------------------------------------------------------------------------------

VALID_DEP = Deployment("fraud", "1").promote("2", 1).start_canary("3", 0.2, 2).add_shadow("4", 3).to_dict()
BAD_DEP: dict[str, st.SearchStrategy[Any]] = {
    "model": not_a_name, "champion": not_a_name, "canary": json_values.filter(lambda v: v is not None
                                                                               and not _is_name(v)),
    "canary_fraction": not_a_number, "ab_split": not_a_number, "updated_at": not_a_count,
    "shadows": not_a_list | st.lists(not_a_name, min_size=1, max_size=3),
    "history": not_a_list | st.lists(not_a_name, min_size=1, max_size=3),
    "ab": json_values.filter(lambda v: v is not None and not (isinstance(v, list) and len(v) == 2
                                                               and all(_is_name(x) for x in v))),
}


@FEW
@given(value=garbage() | wrong(VALID_DEP, BAD_DEP), key=st.sampled_from([b"fraud", b"\xff\xfe", b""]) | st.none())
def test_control_records_that_are_not_deployments_are_skipped(value: bytes | None, key: bytes | None) -> None:
    got = parse_deployment(key, value)
    assert isinstance(got, Skip) and str(got) == "skipped" and got.reason and len(got.detail) <= 300


def test_each_reviewed_control_poison_is_skipped_with_a_reason_and_from_dict_says_what_is_wrong() -> None:
    reasons = {value: parse_deployment(b"fraud", value) for value in NAMED_POISON}
    assert all(isinstance(r, Skip) for r in reasons.values())
    assert reasons[b"[" * 100_000].reason == "malformed_json"  # RecursionError before
    assert reasons[b"\xff\xfe\xfa"].reason == "malformed_json"  # not UTF-8
    assert reasons[None].reason == "tombstone"
    for value in (None, [], 5, "x", True):
        with pytest.raises(ModelError, match="not an object"):
            Deployment.from_dict(value)
    with pytest.raises(ModelError, match="updated_at must be epoch milliseconds"):
        Deployment.from_dict({**VALID_DEP, "updated_at": float("inf")})  # OverflowError before
    with pytest.raises(ModelError, match="champion must be a non-empty printable string"):
        Deployment.from_dict({**VALID_DEP, "champion": None})  # became the version "None" before
    assert parse_deployment(b"other", json.dumps(VALID_DEP).encode()).reason == "key_mismatch"  # type: ignore[union-attr]
    assert parse_deployment(None, json.dumps(VALID_DEP).encode()).reason == "no_key"  # type: ignore[union-attr]
    assert parse_deployment(b"fraud", json.dumps(VALID_DEP).encode()) == Deployment.from_dict(VALID_DEP)


def test_the_follower_skips_bad_records_and_keeps_them_for_counts_and_alerts(catalog: SchemaCatalog) -> None:
    follower = ControlFollower({"bootstrap.servers": "127.0.0.1:9"}, "ns.models")
    try:
        good = json.dumps(VALID_DEP).encode()
        parsed = [follower._parse(StoredMessage("ns.models", v, i, key_=k)) for i, (k, v) in enumerate(
            [(b"fraud", b"null"), (b"fraud", good), (b"\xffwho", b"[" * 100_000), (b"fraud", b"1e999")])]
        assert parsed[1] == Deployment.from_dict(VALID_DEP) and parsed.count(None) == 3
        counts, kept = follower.skips.drain()
        assert sum(counts.values()) == 3 and {t for t, _ in counts} == {"ns.models"}
        assert [k.offset for k in kept] == [0, 2, 3] and follower.skips.drain()[1] == []
    finally:
        follower.close()
    alerts = [bad_control_alert(k, {"fraud"}, NOW) for k in kept]
    assert [a.model for a in alerts] == ["fraud", "unknown", "fraud"]  # an unserved key is not a label value
    assert all(a.kind == "bad_control_record" and a.severity == "critical" for a in alerts)
    assert "ns.models[0]@2" in alerts[1].message and "driftline model" in alerts[1].message
    assert bad_control_alert(kept[0], {"fraud"}, NOW + 5).id == alerts[0].id  # same record, same id
    assert len({a.id for a in alerts}) == 3
    assert alerts[1].id == hashlib.sha256(b"ns.models[0]@2|bad_control_record").hexdigest()[:32]
    for a in alerts:
        assert read_event(catalog, encode_event(catalog, a)) == a


def test_the_skip_log_counts_each_record_once_and_does_not_flood(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    clock = [0.0]
    skips = SkipLog(logging.getLogger("test.poison"), metrics.skipped, every_s=60, clock=lambda: clock[0])
    with caplog.at_level("WARNING", logger="test.poison"):
        for offset in range(100):
            skips.skip("t", 1, offset, None, Skip("malformed_json", "not JSON"))
        skips.skip("t", 1, 5, None, Skip("malformed_json", "not JSON"))  # read again: not counted again
        clock[0] = 61.0
        skips.skip("t", 1, 100, None, Skip("malformed_json", "not JSON"))
    assert metrics.registry.get_sample_value("driftline_records_skipped_total",
                                             {"topic": "t", "reason": "malformed_json"}) == 101
    assert len(caplog.records) == 2 and "t[1]@0" in caplog.records[0].getMessage()
    assert "99 more" in caplog.records[1].getMessage() and "t[1]@100" in caplog.records[1].getMessage()


# -- sketches and drift state ---------------------------------------------------------------------------------------


def profiles(model: str, version: str) -> ReferenceProfile | None:
    """The registry as the drift agent sees it: fraud v1 has a profile, nothing else."""
    return PROFILE if (model, version) == ("fraud", "1") else None


def monitor(max_pending: int = 1_000) -> DriftMonitor:
    return DriftMonitor(profiles, PolicyConfig(), grace_ms=0, max_pending=max_pending, max_skew_ms=SKEW_MS)


def sketch_at(start: int, model: str = "fraud", n: int = 0) -> WindowSketch:
    s = WindowSketch.empty(PROFILE, model, "1", start, start + 10_000, "w1")
    if n:
        rng = np.random.default_rng(start % 1000)
        columns = {f.name: (rng.choice(np.array(f.categories, dtype=object), n) if hasattr(f, "categories")
                            else rng.normal(f.mean, f.std + 1, n)) for f in PROFILE.features}
        s.fold(PROFILE, columns, {}, rng.uniform(0, 1, n), n, 1)
    return s


VALID_SKETCH = sketch_at(NOW - 20_000, n=50).to_dict()
BAD_SKETCH: dict[str, st.SearchStrategy[Any]] = {
    "model": not_a_name | st.just("no-such-model"), "version": not_a_name | st.just("99"),
    "start_ms": not_a_count | st.sampled_from([NOW + 10 * SKEW_MS, 0, 2**62]),
    "end_ms": not_a_count | st.sampled_from([NOW - 30_000, NOW + 10 * SKEW_MS]),
    "columns": not_an_object | st.just({}) | st.just({k: v for k, v in list(VALID_SKETCH["columns"].items())[1:]}),
    "score": not_an_object | st.just({**VALID_SKETCH["score"], "counts": [1, 2]})
    | st.just({**VALID_SKETCH["score"], "n": 10**6}) | st.just({**VALID_SKETCH["score"], "sum": None}),
    "messages": not_a_count, "dead_letters": not_a_count | st.just(10**6),
    "contributors": not_a_list | st.lists(not_a_name, min_size=1, max_size=2),
}


@FEW
@given(value=garbage() | wrong(VALID_SKETCH, BAD_SKETCH))
def test_sketches_that_do_not_parse_or_fit_are_skipped(value: bytes | None) -> None:
    m = monitor()
    got = parse_sketch(value, m, NOW)
    assert isinstance(got, Skip) and m.pending == {}


def test_real_sketches_pass_and_what_the_review_found_is_refused() -> None:
    m = monitor()
    good = parse_sketch(json.dumps(VALID_SKETCH).encode(), m, NOW)
    assert isinstance(good, WindowSketch) and good.to_dict() == VALID_SKETCH
    future = json.dumps({**VALID_SKETCH, "start_ms": NOW + 2 * SKEW_MS, "end_ms": NOW + 2 * SKEW_MS}).encode()
    assert parse_sketch(future, m, NOW).reason == "window_out_of_range"  # type: ignore[union-attr]
    unknown = json.dumps({**VALID_SKETCH, "model": "ghost"}).encode()
    assert parse_sketch(unknown, m, NOW).reason == "unknown_model"  # type: ignore[union-attr]
    assert parse_sketch(b"[" * 100_000, m, NOW).reason == "malformed_json"  # type: ignore[union-attr]


def test_pending_windows_are_bounded_and_windows_ending_apart_merge(caplog: pytest.LogCaptureFixture) -> None:
    m = monitor(max_pending=5)
    with caplog.at_level("WARNING", logger="driftline.streams.core.drift"):
        for i in range(12):
            assert m.add(sketch_at(NOW + i * 10_000), (0, i))
    assert sorted(k[2] for k in m.pending) == [NOW + i * 10_000 for i in range(7, 12)]  # the oldest went
    assert sum("dropped unevaluated" in r.getMessage() for r in caplog.records) == 7
    a, b = sketch_at(NOW, n=20), sketch_at(NOW, n=30)
    b.end_ms += 1234  # a count window of another worker: same start, another end
    m2 = monitor()
    m2.add(a)
    m2.add(b)
    (merged,) = m2.pending.values()
    assert merged.messages == 50 and merged.end_ms == a.end_ms + 1234


def test_the_profile_cache_is_bounded_whatever_names_the_topic_brings(catalog: SchemaCatalog) -> None:
    store = ProfileStore(ModelRegistry(EXAMPLE_MODELS), catalog, max_entries=8)
    for i in range(100):
        assert store.get(f"ghost-{i}", "1") is None
    assert store.get("../fraud", "1") is None and store.get("fraud", "../1") is None
    assert store.get("fraud", "1") is not None and len(store._cache) == 8


def state_of(m: DriftMonitor) -> dict[str, Any]:
    m.add(sketch_at(NOW - 20_000, n=40), (0, 7))
    return json.loads(json.dumps(m.snapshot("fraud")))


VALID_STATE = state_of(monitor())
BAD_STATE: dict[str, st.SearchStrategy[Any]] = {
    "format": json_values.filter(lambda v: v != 1), "version": json_values.filter(lambda v: v is not None
                                                                                  and not _is_name(v)),
    "policy": not_an_object | st.just({**VALID_STATE["policy"], "window_index": -1})
    | st.just({**VALID_STATE["policy"], "history": {"k": [1, "x"]}})
    | st.just({**VALID_STATE["policy"], "detectors": {"k": {"kind": "nope", "history": []}}})
    | st.just({**VALID_STATE["policy"], "detectors": {"k": {"kind": "adwin", "history": [1e999]}}}),
    "pending": not_a_list | st.lists(not_an_object, min_size=1, max_size=2)
    | st.just([{**VALID_SKETCH, "model": "other"}]),
    "applied": json_values.filter(lambda v: v is not None and not (isinstance(v, list) and len(v) == 2
                                                                   and all(_is_count(x) for x in v))),
}


@FEW
@given(value=garbage() | wrong(VALID_STATE, BAD_STATE))
def test_drift_state_that_does_not_parse_is_skipped_and_changes_nothing(value: bytes | None) -> None:
    m = monitor()
    m.add(sketch_at(NOW - 5_000, n=10), (0, 3))
    before = json.dumps(m.snapshot("fraud"))
    got = resume(m, "fraud", value, NOW)
    assert isinstance(got, Skip) and json.dumps(m.snapshot("fraud")) == before


def test_a_valid_state_resumes_and_stale_pending_windows_are_dropped() -> None:
    m = monitor()
    assert resume(m, "fraud", json.dumps(VALID_STATE).encode(), NOW) is None
    assert m.snapshot("fraud")["pending"] == VALID_STATE["pending"] and m.applied["fraud"] == (0, 7)
    later = monitor()
    assert resume(later, "fraud", json.dumps(VALID_STATE).encode(), NOW + 2 * SKEW_MS) is None
    assert later.pending == {} and later.applied["fraud"] == (0, 7)


# -- retrain requests and alerts ------------------------------------------------------------------------------------

RETRAIN = {"id": "r1", "model": "fraud", "model_version": "1", "stage": "requested", "reason": "drift",
           "alert_ids": [], "data_start": NOW - 60_000, "data_end": NOW, "requested_at": NOW,
           "candidate_version": None}
ALERT = {"id": "a1", "model": "fraud", "model_version": "1", "kind": "data_drift", "severity": "warning",
         "feature": "amount", "statistic": "ks", "value": 0.3, "threshold": 0.1, "window_start": NOW,
         "window_end": NOW, "sample_size": 10, "reference_size": 10, "top_bins": [], "message": "m",
         "created_at": NOW}


def avro_garbage(catalog: SchemaCatalog) -> st.SearchStrategy[bytes | None]:
    """Garbage, plus framed records of the wrong schema, unknown ids, truncated and extended bodies."""
    retrain, alert = catalog.latest("driftline.RetrainRequest"), catalog.latest("driftline.Alert")
    good_r, good_a = encode(retrain, RETRAIN), encode(alert, ALERT)
    card = catalog.latest("driftline.examples.CardTransaction")
    return st.one_of(
        garbage(),
        st.binary(max_size=64).map(lambda b: frame(0x7FFF_FFF0, b)),  # an id nobody registered
        st.integers(0, len(good_r) - 1).map(lambda n: good_r[:n]),
        st.integers(0, len(good_a) - 1).map(lambda n: good_a[:n]),
        st.just(frame(card.id, b"\x00" * 40)),
    )


@FEW
@given(data=st.data())
def test_retrain_records_that_are_not_requests_are_skipped(catalog: SchemaCatalog, data: st.DataObject) -> None:
    alert = catalog.latest("driftline.Alert")
    value = data.draw(avro_garbage(catalog) | st.just(encode(alert, ALERT))
                      | st.sampled_from(["data_start", "data_end", "requested_at"]).map(
                          lambda k: encode(catalog.latest("driftline.RetrainRequest"), {**RETRAIN, k: 2**62}))
                      | st.sampled_from(["id", "model", "stage"]).map(
                          lambda k: encode(catalog.latest("driftline.RetrainRequest"), {**RETRAIN, k: ""})))
    assert isinstance(parse_retrain(catalog, value), Skip)


@FEW
@given(body=st.binary(max_size=120))
def test_retrain_and_alert_readers_never_raise_on_a_valid_frame_with_any_body(catalog: SchemaCatalog,
                                                                              body: bytes) -> None:
    for subject in ("driftline.RetrainRequest", "driftline.Alert"):
        value = frame(catalog.latest(subject).id, body)
        got = parse_retrain(catalog, value)
        assert isinstance(got, Skip) or got.stage and 0 <= got.data_start
        event = read_event(catalog, value)
        if not isinstance(event, Skip):  # whatever decoded, it prints
            assert format_event(event, colour=True)


@FEW
@given(data=st.data())
def test_the_alerts_reader_skips_what_is_not_an_alert_or_retrain_event(catalog: SchemaCatalog,
                                                                        data: st.DataObject) -> None:
    labeled = catalog.latest("driftline.Labeled")
    value = data.draw(avro_garbage(catalog) | st.just(encode(labeled, {
        "request_id": "r", "model": "fraud", "model_version": "1", "variant": "champion", "score": 0.1,
        "predicted": "legit", "label": "legit", "target": None, "event_time": NOW, "label_time": NOW,
        "features": b"\0" * 8})))
    assert isinstance(read_event(catalog, value), Skip)


def test_events_print_even_with_times_no_calendar_has(catalog: SchemaCatalog) -> None:
    alert = read_event(catalog, encode(catalog.latest("driftline.Alert"),
                                       {**ALERT, "window_end": 2**62, "severity": "bogus"}))
    assert not isinstance(alert, Skip)
    assert format_event(alert, colour=True).startswith("??:??:?? BOGUS")
    retrain = read_event(catalog, encode(catalog.latest("driftline.RetrainRequest"), RETRAIN))
    assert not isinstance(retrain, Skip) and "RETRAIN" in format_event(retrain)


def test_labeled_rows_of_another_schema_or_width_are_skipped(catalog: SchemaCatalog) -> None:
    labeled = catalog.latest("driftline.Labeled")
    row = {"request_id": "r", "model": "fraud", "model_version": "1", "variant": "champion", "score": 0.1,
           "predicted": "fraud", "label": "fraud", "target": None, "event_time": NOW, "label_time": NOW,
           "features": b"\0" * 8}
    got = parse_labeled(catalog, encode(labeled, row), "fraud")
    assert not isinstance(got, Skip) and got.model == "fraud" and got.row.truth == 1.0
    assert parse_labeled(catalog, encode(labeled, {**row, "features": b"\0" * 7}), "fraud").reason == \
        "invalid_labeled"  # type: ignore[union-attr]
    assert parse_labeled(catalog, encode(catalog.latest("driftline.Alert"), ALERT), "fraud").reason == \
        "wrong_schema"  # type: ignore[union-attr]
    assert isinstance(parse_labeled(catalog, bytes([MAGIC]) + b"\0" * (HEADER.size - 1), "fraud"), Skip)



@st.composite
def fitting_sketches(draw: st.DrawFn) -> bytes:
    """Sketches that pass every check, with adversarial counts: bins, nulls and sums no worker would produce."""
    def column(ref: Any) -> dict[str, Any]:
        n = draw(st.integers(0, 10_000))
        fine_len = len(ref.fine_counts) if hasattr(ref, "fine_counts") else 0
        at = draw(st.integers(0, len(ref.counts) - 1))
        counts = [n if i == at else 0 for i in range(len(ref.counts))]
        fine = [0] * fine_len
        if fine_len:
            fine[draw(st.integers(0, fine_len - 1))] = n
        big = st.floats(allow_nan=False, allow_infinity=False)
        return {"counts": counts, "fine": fine, "n": n, "nulls": draw(st.integers(0, 10_000)),
                "sum": draw(big), "sum_sq": draw(big)}

    messages = draw(st.integers(0, 10**9))
    start = NOW - draw(st.integers(0, SKEW_MS - 20_000))
    return json.dumps({
        "model": "fraud", "version": "1", "start_ms": start, "end_ms": start + draw(st.integers(0, 10_000)),
        "columns": {f.name: column(f) for f in PROFILE.monitored}, "score": column(PROFILE.score),
        "messages": messages, "dead_letters": draw(st.integers(0, messages)), "contributors": ["w"],
    }).encode()


@FEW
@given(values=st.lists(fitting_sketches(), min_size=1, max_size=3))
def test_a_sketch_that_passes_the_checks_never_breaks_the_window_evaluation(values: list[bytes]) -> None:
    from driftline.streams.core.drift import alert_record, retrain_record
    from driftline.streams.core.observe import Recent

    m, metrics, recent = monitor(), Metrics(CollectorRegistry()), Recent()
    for i, value in enumerate(values):
        sketch = parse_sketch(value, m, NOW)
        assert isinstance(sketch, WindowSketch)
        m.add(sketch, (0, i))
    for window in m.close_due(NOW + SKEW_MS):
        metrics.observe_window(window)
        recent.add_window(window)
        for decision in window.alerts:
            alert_record(window.sketch, decision, NOW)
        if window.retrain is not None:
            retrain_record(window.sketch, window.retrain, [], 1000, NOW)
    assert resume(monitor(), "fraud", json.dumps(m.snapshot("fraud")).encode(), NOW) is None
