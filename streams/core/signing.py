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


def _message(key: bytes, body: Mapping[str, Any]) -> bytes:
    fields = {k: v for k, v in body.items() if k != SIGNATURE}
    return key + b"\n" + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, body: Mapping[str, Any], secret: bytes) -> dict[str, Any]:
    """``body`` with its signature: HMAC-SHA256 of the Kafka key and the canonical JSON of every other field."""
    digest = hmac.new(secret, _message(key, body), hashlib.sha256).hexdigest()
    return {**{k: v for k, v in body.items() if k != SIGNATURE}, SIGNATURE: PREFIX + digest}


def verify(key: bytes, body: Mapping[str, Any], secret: bytes | None) -> Verdict:
    """Whether ``body`` was signed with ``secret`` for this Kafka key (constant-time); ``not checked`` without one."""
    given = body.get(SIGNATURE)
    if secret is None:
        return "not checked"
    if not isinstance(given, str) or not given.startswith(PREFIX):
        return "unsigned"
    expected = PREFIX + hmac.new(secret, _message(key, body), hashlib.sha256).hexdigest()
    return "valid" if hmac.compare_digest(given.encode(), expected.encode()) else "forged"
