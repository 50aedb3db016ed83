"""Dead letters always fit, a record that breaks the scoring code is isolated, the sink never stalls."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode
from driftline.streams.core.deadletters import ERROR_HEADER, RECORD_OVERHEAD, bound_record, header_bytes, record_bytes
from driftline.streams.core.pipeline import OutRecord, RawMessage, ScorePipeline, ServedModel
from driftline.streams.errors import DeliveryError
from driftline.streams.kafka.clients import AckedSink

NOW = 1_767_225_700_000
ERRORS = [(ERROR_HEADER + "reason", b"malformed_avro"), (ERROR_HEADER + "exception.message", b"x" * 300)]

blobs = st.one_of(st.none(), st.binary(max_size=64), st.integers(0, 300_000).map(lambda n: b"k" * n))
# Original headers never carry driftline's own prefix here: the assertions tell the two apart by it (hypothesis
# draws string constants from the code under test, so it does try "driftline.errors." as a name).
header_lists = st.lists(st.tuples(st.text(max_size=40).filter(lambda name: not name.startswith(ERROR_HEADER)),
                                  st.one_of(st.none(), st.binary(max_size=3000))), max_size=300)


@settings(max_examples=300, deadline=None)
@given(key=blobs, value=blobs, headers=header_lists, limit=st.integers(4096, 600_000))
def test_a_dead_letter_always_fits_and_says_what_was_cut(key: bytes | None, value: bytes | None,
                                                         headers: list[Any], limit: int) -> None:
    k, v, h = bound_record(key, value, headers, ERRORS, limit)
    assert record_bytes(k, v, h) <= limit
    assert all(e in h for e in ERRORS)  # driftline's own headers are never cut
    marks = {name: val for name, val in h if name.startswith(ERROR_HEADER)}
    if record_bytes(key, value, headers) + header_bytes(ERRORS) + RECORD_OVERHEAD <= limit:
        assert (k, v, h) == (key, value, headers + ERRORS)  # nothing changes when it fits
    for part, original, kept in (("key", key, k), ("value", value, v)):
        if kept != original:
            assert original is not None and kept is not None and original.startswith(kept)
            assert marks[f"{ERROR_HEADER}{part}.size"] == str(len(original)).encode()
            assert marks[f"{ERROR_HEADER}{part}.sha256"] == hashlib.sha256(original).hexdigest().encode()
    kept_original = [x for x in h if x not in ERRORS and not x[0].startswith(ERROR_HEADER)]
    assert kept_original == headers[: len(kept_original)]  # a prefix, in order
    if len(kept_original) < len(headers):
        assert marks[f"{ERROR_HEADER}headers.dropped"] == str(len(headers) - len(kept_original)).encode()


def _pipeline(catalog: SchemaCatalog, model: OnnxModel, limit: int = 100_000) -> ScorePipeline:
    return ScorePipeline({"ns.requests": ServedModel(model, catalog, max_message_bytes=4096)},
                         catalog.latest("driftline.Prediction"), predictions_topic="ns.predictions",
                         deadletter_topic="ns.deadletter", deadletter_max_bytes=limit)


def _requests(catalog: SchemaCatalog, generator: Any, rng: Any, n: int) -> list[RawMessage]:
    card = catalog.latest("driftline.examples.CardTransaction")
    records, _ = generator.generate(n, rng)
    return [RawMessage("ns.requests", 0, i, r["card_id"].encode(), encode(card, r), None, 0)
            for i, r in enumerate(records)]


def test_a_garbage_request_with_a_huge_key_and_many_headers_gives_a_bounded_dead_letter(
        catalog: SchemaCatalog, fraud_model: OnnxModel) -> None:
    msg = RawMessage("ns.requests", 0, 7, b"K" * 2_000_000, b"garbage",
                     [(f"h{i}", b"v" * 100) for i in range(5000)], 0)
    out = _pipeline(catalog, fraud_model).process([msg], NOW)
    [dead] = out.deadletters
    assert record_bytes(dead.key, dead.value, dead.headers) <= 100_000
    h = dict(dead.headers or [])
    assert h[ERROR_HEADER + "key.size"] == b"2000000"
    assert h[ERROR_HEADER + "key.sha256"] == hashlib.sha256(b"K" * 2_000_000).hexdigest().encode()
    assert int(h[ERROR_HEADER + "headers.dropped"]) > 4000
    assert dead.value == b"garbage" and h[ERROR_HEADER + "reason"] == b"bad_magic"


def test_unreadable_headers_go_to_the_dead_letters_with_key_and_value(catalog: SchemaCatalog,
                                                                      fraud_model: OnnxModel, generator,  # type: ignore[no-untyped-def]
                                                                      rng) -> None:
    good = _requests(catalog, generator, rng, 3)
    bad = RawMessage("ns.requests", 0, 3, b"key", good[0].value, None, 0, "a header name is not UTF-8")
    out = _pipeline(catalog, fraud_model).process([*good, bad], NOW)
    assert len(out.predictions) == 3
    [dead] = out.deadletters
    h = dict(dead.headers or [])
    assert (h[ERROR_HEADER + "reason"], dead.key, dead.value) == (b"malformed_headers", b"key", good[0].value)


def test_a_record_that_breaks_the_scoring_code_is_isolated(catalog: SchemaCatalog, fraud_model: OnnxModel,
                                                           generator, rng, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    msgs = _requests(catalog, generator, rng, 20)
    poison = msgs[13].value
    pipeline = _pipeline(catalog, fraud_model)
    real = pipeline._process_model

    def broken(out: Any, served: Any, batch: list[RawMessage], now_ms: int) -> Any:
        if any(m.value == poison for m in batch):
            raise IndexError("a bug that one record triggers")
        return real(out, served, batch, now_ms)

    monkeypatch.setattr(pipeline, "_process_model", broken)
    with pytest.raises(IndexError):
        pipeline.process(msgs, NOW)
    out = pipeline.process_safely(msgs, NOW)
    assert len(out.predictions) == 19
    [dead] = out.deadletters
    h = dict(dead.headers or [])
    assert (h[ERROR_HEADER + "reason"], h[ERROR_HEADER + "offset"]) == (b"internal_error", b"13")
    # Kafka Connect's name for the exception's class (its ``class.name`` names the failing stage's class).
    assert h[ERROR_HEADER + "exception.class.name"] == b"IndexError" and ERROR_HEADER + "class.name" not in h


def test_a_record_the_producer_refuses_fails_the_batch_instead_of_stalling_it() -> None:
    sink = AckedSink({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 10_000, "log_level": 0})
    ok = OutRecord("t", b"k", b"small")
    with pytest.raises(DeliveryError, match="cannot produce to t"):
        sink.send([ok, OutRecord("t", b"k", b"x" * 50_000), ok], ["batch-1"])
    assert sink.in_flight == 1
    with pytest.raises(DeliveryError):  # the batch never counts as done: its offsets are never stored
        sink.poll(0)


def test_a_failed_delivery_wakes_the_waiter_from_the_sinks_own_thread() -> None:
    """Delivery reports are served on their own thread and wake whoever waits (no broker here: they fail)."""
    import threading

    sink = AckedSink({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0})
    woke = threading.Event()
    threads: list[str] = []

    def wake() -> None:
        threads.append(threading.current_thread().name)
        woke.set()

    sink.wake_on_delivery(wake)
    sink.send([OutRecord("t", b"k", b"v"), OutRecord("t", b"k", b"w")], "batch-1")
    assert woke.wait(30), "the failed delivery never woke the waiter"
    assert threads[0] == "driftline-deliveries"
    with pytest.raises(DeliveryError, match="were not delivered"):
        sink.poll(0)  # collects only: the reports were served by the thread
    assert sink.flush(1) == []  # stops the thread; nothing left in flight


def test_the_dead_letter_bound_follows_a_smaller_topic_limit() -> None:
    from driftline.streams.app.score import deadletter_limit
    from driftline.streams.settings import load_settings

    settings = load_settings(deadletter_max_bytes=500_000)
    assert deadletter_limit(settings, None) == 500_000  # the broker reports no limit (the embedded one)
    assert deadletter_limit(settings, 1_048_588) == 500_000  # Kafka's default is larger
    assert deadletter_limit(settings, 100_000) == 100_000  # a topic configured smaller wins


def test_liveness_reports_a_loop_that_ended() -> None:
    from driftline.streams.core.observe import Liveness

    live = Liveness()
    live.started("score")
    live.started("acknowledge")
    assert live.problems() == {}
    live.stopped("score", "the score loop has ended")
    assert live.problems() == {"score": "the score loop has ended"}


def test_a_hundred_thousand_empty_headers_are_weighed_as_the_wire_carries_them(catalog: SchemaCatalog,
                                                                               fraud_model: OnnxModel) -> None:
    """Each header costs at least two length varints: counted at one byte each, such a dead letter overflowed."""
    msg = RawMessage("ns.requests", 0, 1, b"k", b"G" * 850_000, [("a", None)] * 100_000, 0)
    [dead] = _pipeline(catalog, fraud_model, limit=1_000_000).process([msg], NOW).deadletters
    headers = dead.headers or []
    wire = len(dead.key or b"") + len(dead.value or b"") + sum(len(k) + len(v or b"") + 2 for k, v in headers)
    assert wire <= 1_000_000
    assert int(dict(headers)[ERROR_HEADER + "headers.dropped"]) > 0


def test_a_batch_of_consumed_records_reads_like_each_record_alone() -> None:
    """raw_messages reads field by field over the batch; it must give what raw_message gives one by one."""
    from confluent_kafka import Message

    from driftline.streams.kafka.clients import raw_message, raw_messages

    batch = [Message(topic=f"t{i % 2}", partition=i % 3, offset=100 + i, key=None if i % 4 == 0 else b"k%d" % i,
                     value=b"v" * i, headers=None if i % 2 else [("h", b"%d" % i)], timestamp=(i % 2, 1000 + i))
             for i in range(50)]
    got = raw_messages(batch)
    assert got == [raw_message(m) for m in batch]
    assert [m.timestamp_ms for m in got[:2]] == [0, 1001]  # no timestamp type: 0
    assert raw_messages([]) == []
