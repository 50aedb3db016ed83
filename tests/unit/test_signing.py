"""Signed control records: a record signed with the key is valid; any change, another key or none is refused."""

from __future__ import annotations

import json

import pytest

from driftline.inference.deployment import Deployment
from driftline.streams.core.poison import Skip
from driftline.streams.core.signing import sign, verify
from driftline.streams.kafka.control import ControlRecord, parse_control

KEY = b"k" * 32
TOPIC = "ns.models"


def record(secret: bytes | None, **change: object) -> bytes:
    body = {**Deployment("fraud", "1").promote("2", 1_700_000_000_000).to_dict(), "changed_by": "ana@ops",
            "reason": "better recall"}
    signed = sign(TOPIC, b"fraud", body, secret) if secret else body
    return json.dumps({**signed, **change}).encode()


def test_a_signed_record_reads_back_with_who_and_why() -> None:
    got = parse_control(b"fraud", record(KEY), KEY, TOPIC)
    assert isinstance(got, ControlRecord)
    assert (got.deployment.champion, got.changed_by, got.reason, got.signature) == ("2", "ana@ops", "better recall",
                                                                                    "valid")


@pytest.mark.parametrize(("change", "verdict"), [
    ({"champion": "1"}, "forged_control_record"),           # what serves, changed after signing
    ({"reason": "nothing to see"}, "forged_control_record"),  # the audit trail is signed too
    ({"changed_by": "root"}, "forged_control_record"),
    ({"signature": "hmac-sha256:" + "0" * 64}, "forged_control_record"),
    ({"signature": None}, "unsigned_control_record"),
])
def test_a_changed_or_unsigned_record_is_refused(change: dict[str, object], verdict: str) -> None:
    got = parse_control(b"fraud", record(KEY, **change), KEY, TOPIC)
    assert isinstance(got, Skip) and got.reason == verdict, got


def test_another_key_or_another_model_key_is_forged() -> None:
    assert parse_control(b"fraud", record(b"x" * 32), KEY, TOPIC) == Skip(
        "forged_control_record", parse_control(b"fraud", record(b"x" * 32), KEY, TOPIC).detail)  # type: ignore[union-attr]
    body = json.loads(record(KEY))
    body["model"] = "other"  # replayed under another model's key: the key is part of what is signed
    resigned_key = parse_control(b"other", json.dumps(body).encode(), KEY, TOPIC)
    assert isinstance(resigned_key, Skip) and resigned_key.reason == "forged_control_record"


def test_without_a_key_records_are_read_and_marked_not_checked() -> None:
    got = parse_control(b"fraud", record(None), None, TOPIC)
    assert isinstance(got, ControlRecord) and got.signature == "not checked"
    assert verify(TOPIC, b"fraud", json.loads(record(KEY)), None) == "not checked"
    unsigned = parse_control(b"fraud", record(None), KEY, TOPIC)
    assert isinstance(unsigned, Skip) and unsigned.reason == "unsigned_control_record"


def test_a_record_signed_for_another_namespace_is_forged() -> None:
    got = parse_control(b"fraud", record(KEY), KEY, "staging.models")
    assert isinstance(got, Skip) and got.reason == "forged_control_record"


@pytest.mark.parametrize("poison", [{"reason": "\ud800"}, {"\udfff": 1}, {"changed_by": "\x1b[2J\nroot"}])
def test_strings_no_signer_writes_are_refused_or_made_printable_never_raised(poison: dict[str, object]) -> None:
    """Before: a lone surrogate in ``reason`` crashed every worker that had the key, at every restart."""
    value = (json.dumps({**json.loads(record(None)), **poison, "signature": "hmac-sha256:00"})).encode()
    got = parse_control(b"fraud", value, KEY, TOPIC)
    assert isinstance(got, Skip) and got.reason == "forged_control_record"
    unchecked = parse_control(b"fraud", json.dumps({**json.loads(record(None)), **poison}).encode(), None, TOPIC)
    assert isinstance(unchecked, ControlRecord)
    assert unchecked.reason.isprintable() and unchecked.changed_by.isprintable()
    signed = parse_control(b"fraud", json.dumps(sign(TOPIC, b"fraud", {**json.loads(record(None)), **poison}, KEY)
                                                ).encode(), KEY, TOPIC)
    assert isinstance(signed, ControlRecord) and signed.signature == "valid"  # what a signer wrote still verifies
