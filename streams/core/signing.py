"""Signed control records: who changed what serves, why, and proof that it was someone holding the key.

A deployment record on ``{ns}.models`` decides what every worker serves, so
whoever can write that topic decides too. With a control key (a secret
setting), writers add ``changed_by``, ``reason`` and an HMAC-SHA256 over the
record's canonical JSON and its Kafka key; workers refuse a record whose
signature is missing or wrong. The broker's ACLs decide who may write the
topic; the key decides whose writes count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Literal

SIGNATURE = "signature"
PREFIX = "hmac-sha256:"
Verdict = Literal["valid", "unsigned", "forged", "not checked"]


def _message(topic: str, key: bytes, body: Mapping[str, Any]) -> bytes:
    """The signed bytes: the topic (so a record signed for one namespace is not valid in another), the Kafka key,
    and every field but the signature as canonical JSON in ASCII (any string, lone surrogates too, encodes)."""
    fields = {k: v for k, v in body.items() if k != SIGNATURE}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return topic.encode("utf-8", "surrogatepass") + b"\n" + key + b"\n" + canonical.encode("ascii")


def sign(topic: str, key: bytes, body: Mapping[str, Any], secret: bytes) -> dict[str, Any]:
    """``body`` with its signature: HMAC-SHA256 of the topic, the Kafka key and the canonical JSON of the rest."""
    digest = hmac.new(secret, _message(topic, key, body), hashlib.sha256).hexdigest()
    return {**{k: v for k, v in body.items() if k != SIGNATURE}, SIGNATURE: PREFIX + digest}


def verify(topic: str, key: bytes, body: Mapping[str, Any], secret: bytes | None) -> Verdict:
    """Whether ``body`` was signed with ``secret`` for this topic and key (constant-time); never raises."""
    given = body.get(SIGNATURE)
    if secret is None:
        return "not checked"
    if not isinstance(given, str) or not given.startswith(PREFIX):
        return "unsigned"
    try:
        expected = PREFIX + hmac.new(secret, _message(topic, key, body), hashlib.sha256).hexdigest()
    except (TypeError, ValueError):  # a body no signer could have produced
        return "forged"
    return "valid" if hmac.compare_digest(given.encode("ascii", "replace"), expected.encode()) else "forged"
