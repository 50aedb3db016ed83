"""Personal fields: marked in the request schema or the manifest, never shown or dead-lettered in clear.

A request field is personal when its Avro field carries ``"driftline.pii":
true`` or the model's manifest lists it under ``"personal"``. Validation
messages then name such a field without its value, and a dead letter of a
record that decoded is re-encoded with its writer schema, each personal
value replaced: a string (or bytes) by a keyed HMAC-SHA256 pseudonym (the
same value always gives the same pseudonym under one key, so support can
match a case without reading it), a number by null where the field allows
it, else by 0. A record that does not decode cannot be parsed, so its
bytes are kept as they came.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Iterable, Mapping
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from driftline.schemas.catalog import SchemaCatalog

MARK = "driftline.pii"
PSEUDONYM = "pii-hmac:"
HEADER_SIZE = 5  # the Confluent framing: magic byte and schema id


def personal_fields(schema_raw: Mapping[str, Any], listed: Iterable[str] = ()) -> frozenset[str]:
    """Top-level fields of ``schema_raw`` marked ``"driftline.pii": true``, and the ``listed`` ones."""
    marked = {str(f["name"]) for f in schema_raw.get("fields", ()) if isinstance(f, Mapping) and f.get(MARK) is True}
    return frozenset(marked | set(listed))


def pseudonym(key: bytes, value: str | bytes) -> str:
    """The keyed pseudonym of a value: ``pii-hmac:`` and 32 hex digits of HMAC-SHA256."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return PSEUDONYM + hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


def _types(avro_type: Any) -> list[str]:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    return [b if isinstance(b, str) else str(b.get("type")) for b in branches]


def _replacement(avro_type: Any, value: Any, key: bytes) -> Any:
    """What stands in the record for a personal ``value`` of a field of ``avro_type``."""
    if value is None:
        return None
    types = _types(avro_type)
    if isinstance(value, str | bytes) and ("string" in types or "bytes" in types):
        text = pseudonym(key, value)
        return text if "string" in types else text.encode()
    if "null" in types:
        return None
    return 0 if isinstance(value, int) else 0.0


class Redactor:
    """Re-encodes framed records with their personal fields replaced, for the dead-letter topic."""

    def __init__(self, catalog: SchemaCatalog, key: bytes) -> None:
        self.catalog = catalog
        self.key = key

    def redact(self, value: bytes | None, also: frozenset[str] = frozenset()) -> tuple[bytes, list[str]] | None:
        """(the record re-encoded, the fields replaced: none when it has no personal field); None when it does not
        decode (its bytes cannot be parsed, so they cannot be redacted).

        ``also``: the model's personal fields (its reader schema's marks and
        its manifest's list), which count for records written with an older
        schema too; the writer schema's own marks are added.
        """
        if not value or len(value) < HEADER_SIZE or value[0] != 0:
            return None
        writer = self.catalog.by_id(int.from_bytes(value[1:HEADER_SIZE], "big"))
        if writer is None:
            return None
        personal = personal_fields(writer.raw, also)
        fields = {str(f["name"]): f["type"] for f in writer.raw["fields"]}
        present = [name for name in fields if name in personal]
        if not present:
            return value, []
        try:
            body = io.BytesIO(value[HEADER_SIZE:])
            record = schemaless_reader(body, writer.fast, None)
            if body.tell() != len(value) - HEADER_SIZE or not isinstance(record, dict):
                return None
            for name in present:
                record[name] = _replacement(fields[name], record.get(name), self.key)
            out = io.BytesIO()
            out.write(value[:HEADER_SIZE])
            schemaless_writer(out, writer.fast, record)
        except Exception:  # noqa: BLE001 - a body that does not read: kept as it came, the caller says so
            return None
        return out.getvalue(), present
