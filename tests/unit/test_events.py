"""Alerts and retrain events as typed records: ids, Avro round trips, the reader and the one-line format."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings

from driftline.detectors.evaluate import DEAD_LETTERS, ColumnResult
from driftline.detectors.policy import AlertDecision, RetrainDecision
from driftline.detectors.sketch import WindowSketch
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode, frame
from driftline.streams.app.rollout import bad_control_alert, load_failed_alert
from driftline.streams.catalog import build_catalog
from driftline.streams.core.drift import alert_record, retrain_record
from driftline.streams.core.events import (
    Alert,
    BinShift,
    RetrainEvent,
    encode_event,
    event_id,
    format_event,
    point_alert,
    read_alert,
    read_event,
    read_retrain,
    retrain_request,
)
from driftline.streams.core.poison import Skip, SkippedRecord
from driftline.streams.core.quality import quality_alert
from driftline.streams.settings import Settings
from driftline.streams.trainer.service import parse_retrain
from tests.garbage import garbage

NOW = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC


def old_id(text: str) -> str:
    """The id every producer computed before the typed records: sha256 hex of the text, first 32."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@pytest.fixture(scope="module")
def events_catalog() -> SchemaCatalog:
    return build_catalog(Settings())


def sketch(start: int = NOW - 60_000) -> WindowSketch:
    return WindowSketch("fraud", "3", start, start + 10_000, {}, None, 0, 0, frozenset())


def result(column: str = "amount", statistic: str = "ks") -> ColumnResult:
    return ColumnResult(column, "data_drift", statistic, 0.31, 0.12, 0.001, 0.4, 0.2, 500, 1000,
                        (("[0, 10)", 0.5, 0.1), ("[10, 20)", 0.2, 0.6)))


ALERT = Alert("a1", "fraud", "3", "data_drift", "warning", "amount", "ks", 0.31, 0.12, NOW - 60_000, NOW - 50_000,
              500, 1000, (BinShift("[0, 10)", 0.5, 0.1),), "amount moved", NOW)
RETRAIN = RetrainEvent("r1", "fraud", "3", "requested", "drift", ("a1", "a2"), NOW - 3_600_000, NOW, NOW)


# -- ids ------------------------------------------------------------------------------------------------------------

def test_event_id_is_the_hash_of_the_parts_joined_by_bars() -> None:
    assert event_id("fraud", "3", "x") == old_id("fraud|3|x")
    assert len(event_id("a")) == 32


def test_every_producer_keeps_the_ids_it_had() -> None:
    s, r = sketch(), result()
    assert alert_record(s, AlertDecision(r, "critical", 4), NOW).id == \
        old_id(f"fraud|3|{s.start_ms}|data_drift|amount")
    assert retrain_record(s, RetrainDecision("drift", (), 4), ["a"], 1000, NOW).id == \
        old_id(f"fraud|3|{s.start_ms}|retrain")
    assert point_alert("fraud", "3", "k", "s", 1.0, 0.0, "m", NOW, scope=("shadow", "x")).id == \
        old_id(f"fraud|3|shadow|x|k|{NOW}")
    assert load_failed_alert("fraud", "7", "boom", NOW).id == old_id(f"fraud|7|model_load_failed|{NOW}")
    assert quality_alert(("fraud", "3", "champion"), "performance_drop", 0.7, 0.8, 500, "m", NOW).id == \
        old_id(f"fraud|3|champion|performance_drop|{NOW}")
    concept = retrain_request("fraud", "3", "r", ("a",), NOW, NOW, NOW, cause=("concept_drift", str(NOW)))
    assert concept.id == old_id(f"fraud|3|concept_drift|{NOW}")  # the feedback agent's request
    skipped = SkippedRecord("ns.models", 1, 42, b"fraud", Skip("malformed_json", "no"))
    assert bad_control_alert(skipped, {"fraud"}, NOW).id == old_id("ns.models[1]@42|bad_control_record")


# -- the records ----------------------------------------------------------------------------------------------------

def test_records_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ALERT.severity = "critical"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RETRAIN.stage = "training"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ALERT.top_bins[0].current = 1.0  # type: ignore[misc]
    assert isinstance(ALERT.top_bins, tuple) and isinstance(RETRAIN.alert_ids, tuple)
    assert hash(ALERT) == hash(dataclasses.replace(ALERT))


def test_the_drift_alert_and_retrain_request_of_a_window() -> None:
    s = sketch()
    alert = alert_record(s, AlertDecision(result(DEAD_LETTERS, "dead_letter_rate"), "critical", 4, True), NOW)
    assert alert.feature is None and alert.window_start == s.start_ms and alert.window_end == s.end_ms
    assert alert.top_bins == (BinShift("[0, 10)", 0.5, 0.1), BinShift("[10, 20)", 0.2, 0.6))
    assert alert.message.startswith("dead-letter rate: dead_letter_rate 0.31 > 0.12")
    assert "change point" in alert.message
    req = retrain_record(s, RetrainDecision("drift in amount", (), 4), [alert.id], 30_000, NOW)
    assert (req.stage, req.alert_ids, req.data_start, req.data_end, req.requested_at, req.candidate_version) == \
        ("requested", (alert.id,), s.start_ms - 30_000, s.end_ms, NOW, None)


def test_a_stage_change_keeps_the_request_and_its_id() -> None:
    shadow = RETRAIN.advance("shadow", "v4 in shadow", NOW + 5, "4")
    assert (shadow.id, shadow.alert_ids, shadow.data_start) == (RETRAIN.id, RETRAIN.alert_ids, RETRAIN.data_start)
    assert (shadow.stage, shadow.reason, shadow.requested_at, shadow.candidate_version) == \
        ("shadow", "v4 in shadow", NOW + 5, "4")
    assert shadow.advance("failed", "no", NOW + 6).candidate_version is None
    assert RETRAIN.stage == "requested"


# -- Avro -----------------------------------------------------------------------------------------------------------

def test_round_trip_through_avro_bytes(events_catalog: SchemaCatalog) -> None:
    for event in (ALERT, RETRAIN, RETRAIN.advance("registered", "r", NOW, "4")):
        value = encode_event(events_catalog, event)
        schema, rec = decode(events_catalog, value)  # the full schema: timestamps as datetimes
        assert schema == events_catalog.latest(type(event).SUBJECT)
        assert type(event).from_avro(rec) == event
        assert read_event(events_catalog, value) == event
        assert encode_event(schema, event) == value == encode(schema, event.to_avro())


def test_a_v1_retrain_request_reads_without_a_candidate(events_catalog: SchemaCatalog) -> None:
    v1 = events_catalog.get("driftline.RetrainRequest", 1)
    rec = {k: v for k, v in RETRAIN.to_avro().items() if k != "candidate_version"}
    assert read_event(events_catalog, encode(v1, rec)) == RETRAIN
    assert parse_retrain(events_catalog, encode(v1, rec)) == RETRAIN


def test_an_event_is_written_with_its_own_subject_only(events_catalog: SchemaCatalog) -> None:
    with pytest.raises(ValueError, match="driftline.RetrainRequest"):
        encode_event(events_catalog.latest("driftline.Alert"), RETRAIN)


def test_each_reader_takes_its_own_kind_only(events_catalog: SchemaCatalog) -> None:
    alert, retrain = encode_event(events_catalog, ALERT), encode_event(events_catalog, RETRAIN)
    assert read_alert(events_catalog, alert) == ALERT and read_retrain(events_catalog, retrain) == RETRAIN
    assert read_alert(events_catalog, retrain) == Skip("wrong_schema", "a driftline.RetrainRequest record, not "
                                                                       "driftline.Alert")
    assert isinstance(read_retrain(events_catalog, alert), Skip)


def test_a_record_of_another_shape_under_the_subject_is_skipped() -> None:
    for rec, cls in (({**ALERT.to_avro(), "created_at": None}, Alert), ({**RETRAIN.to_avro(), "alert_ids": [1]},
                                                                       RetrainEvent)):
        with pytest.raises(ValueError, match="created_at|alert_ids"):
            cls.from_avro(rec)  # type: ignore[attr-defined]
    missing = {k: v for k, v in ALERT.to_avro().items() if k != "message"}
    with pytest.raises(ValueError, match="message"):
        Alert.from_avro(missing)


@settings(max_examples=100, deadline=None)
@given(value=garbage())
def test_garbage_is_a_skip_never_an_exception(value: bytes | None) -> None:
    catalog = build_catalog(Settings())
    assert isinstance(read_event(catalog, value), Skip)
    assert isinstance(read_alert(catalog, value), Skip) and isinstance(read_retrain(catalog, value), Skip)


def test_framed_garbage_and_tombstones_are_skips(events_catalog: SchemaCatalog) -> None:
    alert_id = events_catalog.latest("driftline.Alert").id
    assert read_event(events_catalog, None) == Skip("tombstone", "the record has no value (a tombstone)")
    assert read_event(events_catalog, frame(alert_id, b"\x02")).reason == "malformed_avro"  # type: ignore[union-attr]
    assert read_event(events_catalog, b"not avro at all").reason == "malformed_avro"  # type: ignore[union-attr]


# -- the one-line format --------------------------------------------------------------------------------------------

def test_format_event_lines() -> None:
    assert format_event(ALERT) == "23:59:10 WARNING  data_drift       fraud v3 amount moved (n=500)"
    assert format_event(ALERT, colour=True) == \
        "\x1b[33m23:59:10 WARNING  data_drift       fraud v3 amount moved (n=500)\x1b[0m"
    assert format_event(RETRAIN) == "00:00:00 RETRAIN  requested        fraud v3: drift (2 alerts)"
    promoted = RETRAIN.advance("promoted", "better", NOW + 1000, "4")
    assert format_event(promoted, colour=True) == \
        "\x1b[1;35m00:00:01 RETRAIN  promoted         fraud v3 → v4: better (2 alerts)\x1b[0m"
    odd = dataclasses.replace(ALERT, severity="bogus", window_end=2**62)
    assert format_event(odd, colour=True) == "??:??:?? BOGUS    data_drift       fraud v3 amount moved (n=500)\x1b[0m"
