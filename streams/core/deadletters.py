"""Dead letters that can always be delivered: the whole record bounded below the producer's and broker's limits.

A dead letter copies the original key, value and headers, so a garbage
request with a 2 MB key, thousands of headers or a value near the broker's
limit would make the dead letter itself undeliverable, and with it the batch.
:func:`bound_record` cuts whatever is over, key first, then the original
headers, then the value, and says in marker headers what was cut, how big it
was and (for key and value) its SHA-256, so an operator can still match the
dead letter to what the producer sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

Headers = list[tuple[str, bytes | None]]
# driftline's error headers follow Kafka Connect's (``__connect.errors.*``) under its own prefix: where Connect
# writes ``__connect.errors.exception.class.name`` driftline writes ``driftline.errors.exception.class.name``.
ERROR_HEADER = "driftline.errors."
EXCEPTION_CLASS = "exception.class.name"  # the exception's class (Connect's ``class.name`` is the stage's class)
RECORD_OVERHEAD = 1024  # record framing, varints and the marker headers added here
MAX_MESSAGE_CHARS = 1024  # an exception message in a header is cut here
HEADER_OVERHEAD = 10  # on the wire a header also takes two varints (name and value lengths), up to 5 bytes each


def header_bytes(headers: Sequence[tuple[str, bytes | None]] | None) -> int:
    """What headers weigh on the wire: names, values and each header's length varints (counted at their most)."""
    return sum(len(k.encode()) + len(v or b"") + HEADER_OVERHEAD for k, v in headers or ())


def record_bytes(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> int:
    """What a record weighs against a message-size limit (payload bytes, framing not counted)."""
    return len(key or b"") + len(value or b"") + header_bytes(headers)


def _cut(name: str, data: bytes, keep: int) -> tuple[bytes, Headers]:
    markers: Headers = [
        (f"{ERROR_HEADER}{name}.truncated", b"true"),
        (f"{ERROR_HEADER}{name}.size", str(len(data)).encode()),
        (f"{ERROR_HEADER}{name}.sha256", hashlib.sha256(data).hexdigest().encode()),
    ]
    return data[:keep], markers


def bound_record(key: bytes | None, value: bytes | None, original: Sequence[tuple[str, bytes | None]] | None,
                 errors: Headers,
                 limit: int) -> tuple[bytes | None, bytes | None, Headers]:
    """(key, value, headers) of a dead letter whose whole record fits in ``limit`` bytes.

    ``errors`` are driftline's own error headers, always kept. When the whole
    fits, nothing changes. Otherwise the key keeps at most an eighth of the
    room, the original headers at most a quarter (in order, while they fit),
    and the value the rest.
    """
    original = list(original or [])
    if record_bytes(key, value, original) + header_bytes(errors) + RECORD_OVERHEAD <= limit:
        return key, value, original + errors
    room = max(0, limit - header_bytes(errors) - RECORD_OVERHEAD)
    markers: Headers = []
    if key is not None and len(key) > room // 8:
        key, added = _cut("key", key, room // 8)
        markers += added
    room -= len(key or b"")
    kept: Headers = []
    used, cap = 0, room // 4
    for k, v in original:
        size = len(k.encode()) + len(v or b"") + HEADER_OVERHEAD
        if used + size > cap:
            break
        kept.append((k, v))
        used += size
    if len(kept) < len(original):
        markers += [(f"{ERROR_HEADER}headers.dropped", str(len(original) - len(kept)).encode()),
                    (f"{ERROR_HEADER}headers.size", str(header_bytes(original)).encode())]
    room -= used
    if value is not None and len(value) > room:
        value, added = _cut("value", value, max(0, room))
        markers += added
    return key, value, kept + errors + markers
