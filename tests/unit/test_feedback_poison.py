"""Label records that used to stop workers: fastavro's other errors, oversize labels, a date in the future."""

from __future__ import annotations

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import HEADER, MAGIC
from driftline.streams.core.join import STATE_LABEL, StateRecord, encode_state
from driftline.streams.core.pipeline import RawMessage
from tests.unit.test_feedback import feedback_msg, make_agent, reasons


def test_avro_that_makes_fastavro_raise_index_error_is_a_dead_letter_or_a_skip(catalog: SchemaCatalog) -> None:
    agent = make_agent(catalog)
    union_branch_4_of_2 = HEADER.pack(MAGIC, catalog.latest("driftline.Feedback").id) + b"\x02a\x08"
    overlong_varint = HEADER.pack(MAGIC, catalog.latest("driftline.Scored").id) + b"\xff" * 12
    out = agent.process([RawMessage(agent.feedback_topic, 0, 0, b"r", union_branch_4_of_2),
                         RawMessage(agent.scored_topic, 0, 1, b"r", overlong_varint),
                         feedback_msg(agent, catalog, "ok", 2)], 100_000)
    assert reasons(out) == [b"malformed_feedback"]  # the scored record is skipped and counted
    assert sorted(agent.join.waiting) == ["ok"]  # and the next label is served


def test_an_oversize_label_is_a_dead_letter_not_an_unwritable_state_record(catalog: SchemaCatalog) -> None:
    agent = make_agent(catalog)
    big = feedback_msg(agent, catalog, "big", 0)
    big = RawMessage(big.topic, 0, 0, big.key, big.value + b"x" * 1_200_000)
    out = agent.process([big], 100_000)
    assert reasons(out) == [b"too_large"]
    assert agent.join.waiting == {} and agent.state_changes()[0] == []


def test_a_state_record_from_the_future_does_not_stop_the_ttl(catalog: SchemaCatalog) -> None:
    before = make_agent(catalog)
    lab = feedback_msg(before, catalog, "lab", 0)
    key, value = encode_state(StateRecord(STATE_LABEL, "lab", 2**62, (lab.key or b"", lab.value or b"")))
    after = make_agent(catalog)
    after.restore({0: {key: value}}, now_ms=100_000)
    after.process([feedback_msg(after, catalog, "later", 1)], 100_000)
    dead = after.tick(100_000 + 60_001)  # both expire with the TTL: the future date was clamped to now
    assert sorted(reasons(dead)) == [b"no_prediction", b"no_prediction"]
