"""Records as people write them (JSON lines, CSV) turned into what a schema accepts, and back to JSON."""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftline.schemas.catalog import WireSchema
from driftline.schemas.profile import _base_type


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def read_input(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a JSON-lines or CSV file, with their line numbers."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    if path.suffix.lower() == ".csv":
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield i, dict(row)
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield i, json.loads(line)


def coerce(schema: WireSchema, row: dict[str, Any]) -> dict[str, Any]:
    """Convert CSV strings (or loose JSON) to the schema's field types; '' is null."""
    out: dict[str, Any] = {}
    for name, avro_type in schema.field_types.items():
        if name not in row:
            continue
        value = row[name]
        base = _base_type(avro_type)
        if isinstance(value, str) and base != "string":
            if value == "":
                value = None
            elif base in ("int", "long"):
                value = int(value)
            elif base in ("float", "double"):
                value = float(value)
        out[name] = value
    return out
