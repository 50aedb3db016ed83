"""``driftline tail``: consumed messages as JSON lines, Avro decoded, headers as text."""

from __future__ import annotations

import base64
from typing import Any

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode
from driftline.streams.core.records import jsonable
from driftline.streams.kafka.clients import read_headers


def message_to_json(catalog: SchemaCatalog, msg: Any) -> dict[str, Any]:
    """One consumed message as a JSON-ready dict: Avro decoded, headers as text."""
    out: dict[str, Any] = {
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "key": msg.key().decode(errors="replace") if msg.key() is not None else None,
    }
    headers, unreadable = read_headers(msg)
    if headers:
        out["headers"] = {k: (v or b"").decode(errors="replace") for k, v in headers}
    elif unreadable:
        out["headers_error"] = unreadable
    value = msg.value()
    try:
        schema, record = decode(catalog, value)
        out["schema"] = f"{schema.subject} v{schema.version} (id {schema.id})"
        out["value"] = jsonable(record)
    except Exception:  # noqa: BLE001 - dead letters hold anything; show it raw
        out["value_base64"] = base64.b64encode(value or b"").decode()
    return out
