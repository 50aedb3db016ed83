"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

Decoding works on whole batches and returns errors as data: the records that
decoded, and a :class:`Failure` for each message that did not, so the caller
can dead-letter the original bytes and keep going.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from fastavro import schemaless_reader, schemaless_writer

from schemas.catalog import SchemaCatalog, WireSchema

MAGIC = 0
HEADER = struct.Struct(">bI")

Stage = Literal["decode", "validate", "score"]


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one message of a batch was rejected; ``index`` is its position in the batch."""

    index: int
    stage: Stage
    reason: str
    message: str
    error_class: str = "ValueError"


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Records that decoded (with their batch positions and writer schema ids) and failures."""

    records: list[dict[str, Any]]
    indices: np.ndarray
    schema_ids: np.ndarray
    failures: list[Failure] = field(default_factory=list)


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header."""
    return HEADER.pack(MAGIC, schema_id) + body


def encode(schema: WireSchema, record: Mapping[str, Any], *, fast: bool = False) -> bytes:
    """Encode one record in the Confluent wire format.

    ``fast=True`` writes with the logical-type-free schema (timestamps as ints),
    which is what the hot path holds; the bytes are identical.
    """
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC, schema.id))
    schemaless_writer(buf, schema.fast if fast else schema.parsed, record)
    return buf.getvalue()


def encode_many(schema: WireSchema, records: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Encode records with the fast schema, reusing one buffer."""
    header = HEADER.pack(MAGIC, schema.id)
    parsed = schema.fast
    out = []
    buf = io.BytesIO()
    for record in records:
        buf.seek(0)
        buf.truncate()
        buf.write(header)
        schemaless_writer(buf, parsed, record)
        out.append(buf.getvalue())
    return out


def decode(catalog: SchemaCatalog, value: bytes) -> tuple[WireSchema, dict[str, Any]]:
    """Decode one framed message with its own writer schema (for tools, not the hot path)."""
    if len(value) < HEADER.size or value[0] != MAGIC:
        raise ValueError("not a Confluent-framed Avro message")
    _, sid = HEADER.unpack_from(value)
    schema = catalog.by_id(sid)
    if schema is None:
        raise KeyError(f"unknown schema id {sid}")
    record = schemaless_reader(io.BytesIO(value[HEADER.size :]), schema.parsed, None)
    return schema, cast(dict[str, Any], record)


class BatchDecoder:
    """Decode batches of framed messages into records of one reader schema.

    Each writer schema id is resolved against the reader schema, so producers
    on an older compatible version keep working; ids that are unknown, or
    whose schema cannot be resolved to the reader's, become failures.
    """

    def __init__(self, catalog: SchemaCatalog, reader: WireSchema, max_bytes: int) -> None:
        self.catalog = catalog
        self.reader = reader
        self.max_bytes = max_bytes

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        records: list[dict[str, Any]] = []
        indices: list[int] = []
        ids: list[int] = []
        failures: list[Failure] = []
        reader = self.reader
        by_id = self.catalog.by_id
        max_bytes = self.max_bytes
        for i, value in enumerate(values):
            if not value:
                failures.append(Failure(i, "decode", "empty", "message has no value"))
                continue
            if len(value) > max_bytes:
                failures.append(
                    Failure(i, "decode", "too_large",
                            f"message is {len(value)} bytes, over max_message_bytes={max_bytes}")
                )
                continue
            if len(value) < HEADER.size or value[0] != MAGIC:
                failures.append(
                    Failure(i, "decode", "bad_magic",
                            "message does not start with the Confluent header (magic byte 0 "
                            "and a 4-byte schema id); produce it with an Avro serializer")
                )
                continue
            sid = int.from_bytes(value[1:5], "big")
            writer = by_id(sid)
            if writer is None:
                failures.append(
                    Failure(i, "decode", "unknown_schema",
                            f"schema id {sid} is not in the catalog; register the schema")
                )
                continue
            body = io.BytesIO(value)
            body.seek(HEADER.size)
            try:
                if writer is reader:
                    record = schemaless_reader(body, reader.fast, None)
                else:
                    record = schemaless_reader(body, writer.fast, reader.fast)
            except Exception as exc:  # noqa: BLE001 - any body error is this record's failure
                reason = "incompatible_schema" if "Resolution" in type(exc).__name__ else "malformed_avro"
                text = (
                    f"writer schema {writer.subject} v{writer.version} (id {sid}) cannot be read as "
                    f"{reader.subject}: {exc}" if reason == "incompatible_schema"
                    else f"Avro body does not match schema id {sid}: {type(exc).__name__}: {exc}"
                )
                failures.append(Failure(i, "decode", reason, text, type(exc).__name__))
                continue
            if body.tell() != len(value):
                failures.append(
                    Failure(i, "decode", "malformed_avro",
                            f"{len(value) - body.tell()} trailing bytes after the Avro record")
                )
                continue
            records.append(record)  # type: ignore[arg-type]
            indices.append(i)
            ids.append(sid)
        return DecodedBatch(
            records, np.asarray(indices, dtype=np.int64), np.asarray(ids, dtype=np.int64), failures
        )
