"""``driftline report``, ``status`` and ``up`` skip what they cannot parse on the topics they read.

Property tests on the parse functions these commands use (arbitrary bytes,
arbitrary JSON, deep nesting, huge numbers, bad UTF-8, valid Avro of another
schema: nothing raises), and each command's reading path end to end with
the topic replaced by a list of records (no broker).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.schemas.codec import encode, frame
from driftline.streams.cli import demo, report, status
from driftline.streams.core.events import Alert, format_event
from driftline.streams.core.poison import Skip, SkipLog
from driftline.streams.core.profiling import PROFILE_FILE, ProfileStore
from driftline.streams.settings import EXAMPLE_MODELS, Settings
from tests.garbage import garbage, json_values
from tests.helpers import StoredMessage

NOW = 1_767_225_700_000
HOUR = 3_600_000
PROFILE = ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- garbage -------------------------------------------------------------------------------------------------------

def msgs(topic: str, values: list[bytes | None]) -> list[StoredMessage]:
    return [StoredMessage(topic, v, i) for i, v in enumerate(values)]


# -- sketches (driftline report) ----------------------------------------------------------------------------------

profiles = ProfileStore(ModelRegistry(EXAMPLE_MODELS), SchemaCatalog.from_dirs([builtin_schema_dir()]))


def valid_sketch(start: int = NOW - HOUR // 2) -> dict[str, Any]:
    return WindowSketch.empty(PROFILE, "fraud", "1", start, start + 10_000, "w1").to_dict()


@st.composite
def fitting_sketches(draw: st.DrawFn) -> bytes:
    """Sketches that pass every check, with counts, nulls and sums no worker would produce."""
    def column(ref: Any) -> dict[str, Any]:
        n = draw(st.integers(0, 10_000))
        fine_len = len(ref.fine_counts) if hasattr(ref, "fine_counts") else 0
        at = draw(st.integers(0, len(ref.counts) - 1))
        fine = [0] * fine_len
        if fine_len:
            fine[draw(st.integers(0, fine_len - 1))] = n
        big = st.floats(allow_nan=False, allow_infinity=False)
        return {"counts": [n if i == at else 0 for i in range(len(ref.counts))], "fine": fine, "n": n,
                "nulls": draw(st.integers(0, 2**40 - 1)), "sum": draw(big), "sum_sq": draw(big)}

    messages = draw(st.integers(0, 2**40 - 1))
    start = NOW - draw(st.sampled_from([1, 10_000, HOUR // 2, HOUR]))  # some share a window: they merge
    return json.dumps({
        "model": "fraud", "version": "1", "start_ms": start, "end_ms": start + draw(st.integers(0, 2**40)),
        "columns": {f.name: column(f) for f in PROFILE.monitored}, "score": column(PROFILE.score),
        "messages": messages, "dead_letters": draw(st.integers(0, messages)),
        "contributors": draw(st.lists(st.sampled_from(["w1", "w2"]), max_size=2)),
    }).encode()


def wrong_field() -> st.SearchStrategy[bytes]:
    """A valid sketch with one field replaced by any JSON value, or one column cut or lengthened."""
    good = valid_sketch()
    return st.one_of(
        st.tuples(st.sampled_from(sorted(good)), json_values).map(
            lambda kv: json.dumps({**good, kv[0]: kv[1]}).encode()),
        st.sampled_from(sorted(good["columns"])).map(lambda c: json.dumps(
            {**good, "columns": {**good["columns"], c: {**good["columns"][c], "counts": [0]}}}).encode()),
        st.just(json.dumps({**good, "version": "99"}).encode()),  # a version this registry does not have
    )


@FEW
@given(value=garbage() | wrong_field())
def test_the_report_sketch_parse_never_raises(value: bytes | None) -> None:
    got = report.read_sketch(value)
    assert got is not None, "garbage taken for a label batch"
    if not isinstance(got, Skip):
        got = report.fitting(got, profiles.get)
    assert isinstance(got, Skip | WindowSketch)


@FEW
@given(values=st.lists(garbage(), max_size=4))
def test_garbage_on_the_sketches_topic_is_skipped_and_counted(values: list[bytes | None]) -> None:
    skips = SkipLog(logging.getLogger("test"))
    got = report.read_sketches(msgs("t.sketches", values), {"fraud"}, NOW - HOUR, NOW, profiles.get, skips)
    assert got == [] and report.skipped_count(skips) == len(values)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a report takes ~1 s
@given(good=st.lists(fitting_sketches(), min_size=1, max_size=4), bad=st.lists(garbage() | wrong_field(), max_size=3))
def test_a_report_over_any_sketches_that_parse_renders(good: list[bytes], bad: list[bytes | None]) -> None:
    skips = SkipLog(logging.getLogger("test"))
    sketches = report.read_sketches(msgs("t.sketches", [*bad, *good]), {"fraud"}, NOW - 2 * HOUR, NOW,
                                     profiles.get, skips)
    assert len(sketches) >= len(good)  # a field replaced by a fine value may still fit
    skipped = report.skipped_count(skips)
    windows = report.merge_windows(sketches, "fraud", NOW - 2 * HOUR, NOW)
    reports = report.analyse(windows, lambda v: profiles.get("fraud", v), 0.01, 0.02, 0.001)
    page = report.render("fraud", reports, [], NOW - 2 * HOUR, NOW, 0.01, skipped)
    assert reports and page.endswith("</html>")
    assert (f"Skipped {skipped:,} records" in page) == (skipped > 0)


def test_sketches_of_other_models_or_periods_are_left_alone_not_counted() -> None:
    skips = SkipLog(logging.getLogger("test"), keep=10)
    other = {**valid_sketch(), "model": "housing", "version": "7"}  # no profile here, not asked for
    old = {**valid_sketch(NOW - 3 * HOUR), "version": "99"}  # no profile, but not in the period
    mismatched = {**valid_sketch(), "columns": {}}
    values = [json.dumps(d).encode() for d in (other, old, valid_sketch(), mismatched)]
    got = report.read_sketches(msgs("t.sketches", values), {"fraud"}, NOW - HOUR, NOW, profiles.get, skips)
    counts, kept = skips.drain()
    assert len(got) == 1 and dict(counts) == {("t.sketches", "profile_mismatch"): 1}
    assert kept[0].position == "t.sketches[0]@3"


# -- alerts (driftline report, status, up) -----------------------------------------------------------------------

ALERT = {"id": "a1", "model": "fraud", "model_version": "1", "kind": "data_drift", "severity": "warning",
         "feature": "amount", "statistic": "ks", "value": 0.3, "threshold": 0.1, "window_start": NOW - 60_000,
         "window_end": NOW - 50_000, "sample_size": 10, "reference_size": 10, "top_bins": [],
         "message": "amount moved", "created_at": NOW - 40_000}
RETRAIN = {"id": "r1", "model": "fraud", "model_version": "1", "stage": "requested", "reason": "drift",
           "alert_ids": [], "data_start": NOW - HOUR, "data_end": NOW, "requested_at": NOW, "candidate_version": None}
PREDICTION = {"request_id": "r", "entity_key": "c", "model": "fraud", "model_version": "1", "variant": "champion",
              "score": 0.5, "label": None, "schema_id": 1, "provider": "cpu", "event_time": NOW, "scored_at": NOW}
LABELED = {"request_id": "r", "model": "fraud", "model_version": "1", "variant": "champion", "score": 0.1,
           "predicted": "legit", "label": "legit", "target": None, "event_time": NOW, "label_time": NOW,
           "features": b"\0" * 8}
OTHERS = {"driftline.Alert": ALERT, "driftline.RetrainRequest": RETRAIN, "driftline.Prediction": PREDICTION,
          "driftline.Labeled": LABELED}


def avro_poison(catalog: SchemaCatalog) -> st.SearchStrategy[bytes | None]:
    """Garbage, frames of known ids with any body, truncated records, unknown ids, valid records of each schema."""
    ids = [catalog.latest(s).id for s in OTHERS]
    whole = [encode(catalog.latest(s), r) for s, r in OTHERS.items()]
    return st.one_of(
        garbage(),
        st.tuples(st.sampled_from(ids), st.binary(max_size=120)).map(lambda t: frame(*t)),
        st.tuples(st.sampled_from(whole), st.integers(0, 200)).map(lambda t: t[0][:t[1]]),
        st.binary(max_size=40).map(lambda b: frame(0x7FFF_FFF0, b)),
        st.sampled_from(whole),
    )


odd_text = st.text(max_size=30) | st.sampled_from(["x onmouseover=alert(1)", "\x1b[2J", "<b>"])
any_long = st.integers(-(2**63), 2**63 - 1)
odd_alerts = st.fixed_dictionaries({
    **{k: odd_text for k in ("id", "model_version", "kind", "severity", "statistic", "message")},
    "model": st.just("fraud"), "feature": st.none() | odd_text, "value": st.floats(), "threshold": st.floats(),
    "window_start": any_long, "window_end": any_long, "sample_size": any_long, "reference_size": any_long,
    "top_bins": st.just([]), "created_at": st.integers(NOW - HOUR, NOW - 1),
})


@FEW
@given(data=st.data())
def test_the_alert_parse_never_raises_and_what_it_returns_prints(catalog: SchemaCatalog, data: st.DataObject) -> None:
    value = data.draw(avro_poison(catalog))
    got = report.read_alert(catalog, value)
    if isinstance(got, Skip):
        return
    assert isinstance(got.created_at, int)
    assert format_event(got, colour=False)
    assert report.render("fraud", [], [got], NOW - HOUR, NOW, 0.01).endswith("</html>")


@FEW
@given(rec=odd_alerts)
def test_any_alert_record_prints_and_renders(catalog: SchemaCatalog, rec: dict[str, Any]) -> None:
    got = report.read_alert(catalog, encode(catalog.latest("driftline.Alert"), rec, fast=True))
    assert not isinstance(got, Skip)
    assert format_event(got, colour=True)
    page = report.render("fraud", [], [got], NOW - HOUR, NOW, 0.01)
    assert "<script" not in page and '<tr class="' in page


def test_only_alerts_are_read_from_the_alerts_topic(catalog: SchemaCatalog) -> None:
    for subject, rec in OTHERS.items():
        got = report.read_alert(catalog, encode(catalog.latest(subject), rec))
        if subject == "driftline.Alert":
            assert not isinstance(got, Skip) and got.created_at == ALERT["created_at"]
        else:
            assert isinstance(got, Skip) and got.reason == "wrong_schema"
    attr = report.render("fraud", [], [Alert.from_avro({**ALERT, "severity": "x onmouseover=alert(1)"})],
                         NOW - HOUR, NOW, 0.01)
    assert '<tr class="x onmouseover=alert(1)">' in attr  # quoted: an attribute value, not a new attribute


# -- driftline up ---------------------------------------------------------------------------------------------------

@FEW
@given(data=st.data(), subject=st.sampled_from(["driftline.Prediction", "driftline.Alert",
                                                "driftline.RetrainRequest"]))
def test_the_demo_parse_never_raises(catalog: SchemaCatalog, data: st.DataObject, subject: str) -> None:
    got = demo.read_watched(catalog, data.draw(avro_poison(catalog)), subject)
    if not isinstance(got, Skip) and subject != "driftline.Prediction":
        assert format_event(got, colour=True)
    elif isinstance(got, dict):
        assert math.isfinite(float(got["event_time"]))


@FEW
@given(headers=st.none() | st.lists(st.tuples(st.sampled_from(["driftline.errors.reason", "x"]),
                                              st.none() | st.binary(max_size=200))))
def test_a_dead_letter_reason_is_short_and_printable_whatever_the_header(headers: Any) -> None:
    reason = demo.dead_letter_reason(headers)
    assert 0 < len(reason) <= demo.MAX_REASON and reason.isprintable()


class FakeConsumer:
    """One batch of records, then nothing; stops the monitor after the second poll."""

    batch: list[StoredMessage] = []
    stop: threading.Event

    def __init__(self, conf: Any) -> None:
        self.polls = 0

    def assign(self, parts: Any) -> None:
        pass

    def consume(self, n: int, timeout: float) -> list[StoredMessage]:
        self.polls += 1
        if self.polls == 1:
            return self.batch
        FakeConsumer.stop.set()
        return []

    def close(self) -> None:
        pass


def test_the_demo_monitor_skips_and_counts_poison_on_every_watched_topic(
    catalog: SchemaCatalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    s = Settings(namespace="tdemo")
    pred, alerts, retrain, dlq = (s.topic(t) for t in ("predictions", "alerts", "retrain", "deadletter"))
    poison = [b"\xff garbage", b"[" * 100_000, encode(catalog.latest("driftline.Labeled"), LABELED), None]
    FakeConsumer.batch = [
        *msgs(pred, [*poison, encode(catalog.latest("driftline.Prediction"), PREDICTION)]),
        *msgs(alerts, [*poison, encode(catalog.latest("driftline.RetrainRequest"), RETRAIN),
                       encode(catalog.latest("driftline.Alert"), ALERT)]),
        *msgs(retrain, [*poison, encode(catalog.latest("driftline.Alert"), ALERT),
                        encode(catalog.latest("driftline.RetrainRequest"), RETRAIN)]),
        StoredMessage(dlq, b"x", 0, headers_=[("driftline.errors.reason", b"\xff\x1b[2J" * 40)]),
        StoredMessage(dlq, None, 1),
    ]
    FakeConsumer.stop = stop = threading.Event()
    monkeypatch.setattr(demo, "Consumer", FakeConsumer)
    watch = demo.Watch()
    with caplog.at_level(logging.WARNING, logger="driftline.streams.cli.demo"):
        demo.monitor(s, catalog, watch, stop, 0.0)
    assert (watch.predictions, watch.alerts, watch.retrains, watch.deadletters) == (1, 1, 1, 2)
    assert watch.skipped == 3 * len(poison) + 2  # the retrain on the alerts topic, the alert on the retrain one
    assert all(len(r) <= demo.MAX_REASON and r.isprintable() for r in watch.reasons)
    assert f"skipped {watch.skipped} records that do not parse" in demo.render(watch, 1.0, 10.0, None, "b:1")
    assert any(f"{pred}[0]@0" in r.getMessage() for r in caplog.records)


# -- driftline report and status, with the topics as lists ------------------------------------------------------

def fake_topics(topics: dict[str, list[StoredMessage]]) -> Any:
    def iter_topic(conf: Any, topic: str, **_: Any) -> Iterator[StoredMessage]:
        yield from topics.get(topic, [])
    return iter_topic


def poisoned_topics(catalog: SchemaCatalog, s: Settings) -> dict[str, list[StoredMessage]]:
    alert = encode(catalog.latest("driftline.Alert"), {**ALERT, "created_at": NOW - 1000})
    return {
        s.topic("sketches"): msgs(s.topic("sketches"), [
            b"\x00\x01garbage", b"[" * 100_000, b"-1e999", b'{"model": "fraud"}', None,
            json.dumps({**valid_sketch(NOW - 60_000), "columns": {}}).encode(),
            json.dumps(valid_sketch(NOW - 60_000)).encode()]),
        s.topic("alerts"): msgs(s.topic("alerts"), [
            b"\xff\x00 not Avro", encode(catalog.latest("driftline.RetrainRequest"), RETRAIN),
            frame(catalog.latest("driftline.Alert").id, b"\x02"), alert]),
    }


def test_write_reports_skips_poison_and_says_how_many(catalog: SchemaCatalog, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import driftline.streams.kafka.topics

    s = Settings(namespace="trep")
    monkeypatch.setattr(driftline.streams.kafka.topics, "iter_topic", fake_topics(poisoned_topics(catalog, s)))
    with caplog.at_level(logging.WARNING, logger="driftline.streams.cli.report"):
        (path,) = report.write_reports(s, ["fraud"], HOUR, tmp_path, NOW)
    page = path.read_text()
    assert "Skipped 9 records" in page and "amount moved" in page and "Version 1" in page
    assert "skipped 9 records that do not parse" in caplog.text
    assert "trep.sketches[0]@0" in caplog.text and "trep.alerts[0]@0" in caplog.text


def test_render_status_skips_what_is_not_an_alert(catalog: SchemaCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    import driftline.streams.kafka.control
    import driftline.streams.kafka.topics

    s = Settings(namespace="tstat")
    topics = poisoned_topics(catalog, s)
    monkeypatch.setattr(driftline.streams.kafka.topics, "iter_topic", fake_topics(topics))
    monkeypatch.setattr(status, "fetched_watermarks",
                        lambda conf, parts, sizes: {(t, p): (0, 0) for t, n in parts.items() for p in range(n)})
    monkeypatch.setattr(driftline.streams.kafka.topics, "topic_retention", lambda conf, topics: dict.fromkeys(
        topics, "?"))
    monkeypatch.setattr(status, "committed", lambda conf, group, parts: {(t, p): -1 for t, n in parts.items()
                                                                         for p in range(n)})
    monkeypatch.setattr(driftline.streams.kafka.control, "read_deployments", lambda settings, timeout_s: {})

    def no_worker(url: str, token: str | None = None) -> Any:
        raise OSError("refused")

    monkeypatch.setattr(status, "worker_models", no_worker)
    out = status.render_status(s, "http://127.0.0.1:1")
    assert "amount moved" in out
    assert f"skipped 3 records that do not parse as alerts on {s.topic('alerts')}" in out
    topics[s.topic("alerts")] = topics[s.topic("alerts")][:3]
    out = status.render_status(s, "http://127.0.0.1:1")
    assert "  none" in out and "skipped 3 records" in out
