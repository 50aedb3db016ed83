"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

Decoding works on whole batches and returns errors as data: the records that
decoded, and a :class:`Failure` for each message that did not, so the caller
can dead-letter the original bytes and keep going.
"""

from __future__ import annotations

import io
import logging
import operator
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from fastavro import schemaless_reader, schemaless_writer

from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.columnar import (
    ColumnarReader,
    ColumnarWriter,
    Columns,
    columns_from_records,
    flat_fields,
    resolve_implementation,
)
from driftline.schemas.errors import SchemaError, SchemaUnavailable

MAGIC = 0
HEADER = struct.Struct(">bI")
_head = operator.itemgetter(slice(0, HEADER.size))  # a framed record's magic byte and writer id

Stage = Literal["decode", "validate", "score"]

#: Below this many rows fastavro's ~15 µs a row beats the numpy columnar codec's ~2 ms
#: of fixed cost per batch (measured on the 2-core machine, see bench/RESULTS.md).
log = logging.getLogger(__name__)
COLUMNAR_MIN_ROWS = 128


def columnar_min_rows(implementation: str | None = None) -> int:
    """The smallest batch worth the columnar codec: every batch for the compiled one, which has no fixed cost."""
    return 1 if resolve_implementation(implementation) == "compiled" else COLUMNAR_MIN_ROWS


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
    """Rows that decoded, as columns of the reader schema, and a failure for each other message.

    ``indices[i]`` is the batch position of row ``i``; ``schema_ids[i]`` the
    id it was written with.
    """

    columns: Columns
    indices: np.ndarray
    schema_ids: np.ndarray
    failures: list[Failure] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts (tools and tests; the score path stays columnar)."""
        return self.columns.to_records()


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


class BatchEncoder:
    """Encode columns of one flat schema as framed messages: columnar for big batches (every batch with the
    compiled codec), fastavro for small."""

    def __init__(self, schema: WireSchema, *, columnar_min_rows: int | None = None,
                 implementation: str | None = None) -> None:
        self.schema = schema
        self._writer = ColumnarWriter(schema.raw, HEADER.pack(MAGIC, schema.id), implementation=implementation)
        self.columnar_min_rows = _min_rows(columnar_min_rows, self._writer.implementation)

    def encode(self, n: int, columns: Mapping[str, Any]) -> list[bytes]:
        """``columns[name]``: n values (array or list, None for null) or one scalar for all rows."""
        if n >= self.columnar_min_rows:
            return self._writer.write(n, columns)
        rows = [
            {k: (_py(v[i]) if isinstance(v, (list, np.ndarray)) else v) for k, v in columns.items()}
            for i in range(n)
        ]
        return encode_many(self.schema, rows)


def _min_rows(given: int | None, implementation: str) -> int:
    return columnar_min_rows(implementation) if given is None else given


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def decode(catalog: SchemaCatalog, value: bytes | None, *, fast: bool = False) -> tuple[WireSchema, dict[str, Any]]:
    """Decode one framed message with its own writer schema (for tools, not the hot path).

    ``fast=True`` reads with the logical-type-free schema: timestamps stay
    epoch milliseconds instead of becoming datetimes.
    """
    if value is None or len(value) < HEADER.size or value[0] != MAGIC:
        raise ValueError("not a Confluent-framed Avro message")
    _, sid = HEADER.unpack_from(value)
    schema = catalog.resolve(sid)  # SchemaUnavailable when a registry cannot be asked
    if schema is None:
        raise KeyError(catalog.explain_unknown(sid))
    record = schemaless_reader(io.BytesIO(value[HEADER.size :]), schema.fast if fast else schema.parsed, None)
    return schema, cast(dict[str, Any], record)


class BatchDecoder:
    """Decode batches of framed messages into columns of one reader schema.

    Each writer schema id is resolved against the reader schema once, so
    producers on an older compatible version keep working; ids that are
    unknown, or whose schema cannot be resolved to the reader's, become
    failures. Flat records of primitives are read column by column
    (:mod:`driftline.schemas.columnar`) when a batch has at least ``columnar_min_rows``
    of them; smaller batches and other writer schemas go through fastavro,
    whose per-row cost beats numpy's per-call cost below that size (the
    compiled codec has no such cost and takes every batch).
    """

    def __init__(
        self, catalog: SchemaCatalog, reader: WireSchema, max_bytes: int, *, columnar_min_rows: int | None = None,
        implementation: str | None = None,
    ) -> None:
        self.implementation = resolve_implementation(implementation)
        self.columnar_min_rows = _min_rows(columnar_min_rows, self.implementation)
        self.catalog = catalog
        self.reader = reader
        self.max_bytes = max_bytes
        fields = flat_fields(reader.raw, skip_others=True)
        if not fields:
            raise SchemaError(f"{reader.subject} has no primitive fields to read")
        self.fields = fields
        self._plans: dict[int, ColumnarReader | SchemaError | None] = {}
        self.unavailable: dict[int, str] = {}  # id → why the registry could not be asked about it

    def _plan(self, writer: WireSchema) -> ColumnarReader | SchemaError | None:
        if writer.id not in self._plans:
            try:
                self._plans[writer.id] = ColumnarReader(writer.raw, self.reader.raw,
                                                        implementation=self.implementation)
            except SchemaError as exc:
                self._plans[writer.id] = SchemaError(
                    f"writer schema {writer.subject} v{writer.version} (id {writer.id}) cannot be read as "
                    f"{self.reader.subject} v{self.reader.version}: {exc}"
                )
            except ValueError:
                self._plans[writer.id] = None  # not flat: fastavro reads it
        return self._plans[writer.id]

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        failures: list[Failure] = []
        groups = self._one_writer(values)
        if groups is None:
            groups = self._group(values, failures)
        parts: list[Columns] = []
        positions: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        for sid, (writer, members) in groups.items():
            plan = self._plan(writer)
            batch = cast(list[bytes], list(values) if len(members) == len(values) else [values[i] for i in members])
            if isinstance(plan, SchemaError):
                failures.extend(Failure(i, "decode", "incompatible_schema", str(plan), "SchemaResolutionError")
                                for i in members)
                continue
            if plan is None or len(batch) < self.columnar_min_rows:
                cols, good = self._fastavro(writer, batch, members, failures)
            else:
                try:
                    cols, good = self._columnar(plan, sid, batch, members, failures)
                except (IndexError, ValueError, OverflowError, MemoryError) as exc:  # a reader bug: no crash
                    log.error("the columnar reader failed on a batch of schema id %d (%s): read record by record",
                              sid, exc)
                    cols, good = self._fastavro(writer, batch, members, failures)
            parts.append(cols)
            positions.append(np.asarray(members, dtype=np.int64)[good])
            ids.append(np.full(int(good.sum()), sid, dtype=np.int64))
        failures.sort(key=lambda f: f.index)
        if not parts:
            return DecodedBatch(columns_from_records([], self.fields), np.empty(0, np.int64),
                                np.empty(0, np.int64), failures)
        return DecodedBatch(Columns.concat(parts), np.concatenate(positions), np.concatenate(ids), failures)

    def _one_writer(self, values: Sequence[bytes | None]) -> dict[int, tuple[WireSchema, list[int]]] | None:
        """The usual batch, every record framed with one known writer id and within the size bounds, found
        with C-level passes only (~0.1 µs a record, against ~0.6 for :meth:`_group`); None for any other."""
        if len(values) == 0:
            return None
        framed = cast(Sequence[bytes], values)  # a None among them raises TypeError below
        try:
            heads = set(map(_head, framed))
            if len(heads) != 1 or min(map(len, framed)) <= HEADER.size or max(map(len, framed)) > self.max_bytes:
                return None
            magic, sid = HEADER.unpack(heads.pop())
        except (TypeError, ValueError, struct.error):  # no value, a value that is not bytes: one by one
            return None
        writer = self.catalog.by_id(sid) if magic == MAGIC else None
        return None if writer is None else {sid: (writer, list(range(len(values))))}

    def _group(self, values: Sequence[bytes | None], failures: list[Failure]
               ) -> dict[int, tuple[WireSchema, list[int]]]:
        """Record by record: the failures of unframed, empty or oversize records, the others by writer id."""
        groups: dict[int, tuple[WireSchema, list[int]]] = {}
        by_id = self.catalog.by_id
        max_bytes = self.max_bytes
        for i, value in enumerate(values):
            if not value:
                failures.append(Failure(i, "decode", "empty", "message has no value"))
            elif len(value) > max_bytes:
                failures.append(Failure(i, "decode", "too_large",
                                        f"message is {len(value)} bytes, over max_message_bytes={max_bytes}"))
            elif len(value) < HEADER.size or value[0] != MAGIC:
                failures.append(Failure(i, "decode", "bad_magic",
                                        "message does not start with the Confluent header (magic byte 0 and a "
                                        "4-byte schema id); produce it with an Avro serializer"))
            else:
                sid = int.from_bytes(value[1:5], "big")
                writer = by_id(sid)
                if writer is None:
                    failures.append(self._unknown(i, sid))
                else:
                    groups.setdefault(sid, (writer, []))[1].append(i)
        return groups

    def _unknown(self, i: int, sid: int) -> Failure:
        """An id nobody here knows: the registry lacks it, or could not be asked (see :meth:`prepare`)."""
        why = self.unavailable.get(sid)
        if why is not None:
            return Failure(i, "decode", "registry_unavailable", why, "SchemaUnavailable")
        return Failure(i, "decode", "unknown_schema", self.catalog.explain_unknown(sid))

    def prepare(self, values: Sequence[bytes | None]) -> None:
        """Look up, before :meth:`decode`, the writer ids of ``values`` that this process does not know yet.

        Only with a schema source (a registry), and off the event loop (the
        consumer thread): :meth:`decode` itself never does I/O. An id the
        source could not be asked about is remembered here until a later
        lookup succeeds, and its records fail as ``registry_unavailable``.
        """
        if self.catalog.source is None:
            return
        by_id = self.catalog.by_id
        limit = self.max_bytes
        # only what decode would read: framed (magic byte 0), not over the size limit
        ids = {v[1:5] for v in values if v and HEADER.size <= len(v) <= limit and v[0] == MAGIC}
        for raw_id in ids:
            sid = int.from_bytes(raw_id, "big")
            if by_id(sid) is not None:
                continue
            try:
                self.catalog.resolve(sid)
                self.unavailable.pop(sid, None)
            except SchemaUnavailable as exc:
                self.unavailable[sid] = str(exc)

    @staticmethod
    def _columnar(plan: ColumnarReader, sid: int, batch: list[bytes], members: list[int],
                  failures: list[Failure]) -> tuple[Columns, np.ndarray]:
        lengths = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
        offsets = np.cumsum(lengths) - lengths
        cols, malformed, incompatible = plan.read(b"".join(batch), offsets + HEADER.size, offsets + lengths)
        for j in np.flatnonzero(malformed).tolist():
            failures.append(Failure(members[j], "decode", "malformed_avro",
                                    f"Avro body does not match schema id {sid}: truncated, trailing bytes or "
                                    "an invalid value", "ReadError"))
        for j in np.flatnonzero(incompatible).tolist():
            failures.append(Failure(members[j], "decode", "incompatible_schema",
                                    "a field that the reader schema does not allow to be null is null",
                                    "SchemaResolutionError"))
        good = ~(malformed | incompatible)
        return (cols if good.all() else cols.take(np.flatnonzero(good))), good

    def _fastavro(self, writer: WireSchema, batch: list[bytes], members: list[int],
                  failures: list[Failure]) -> tuple[Columns, np.ndarray]:
        reader = self.reader
        records = []
        good = np.zeros(len(batch), dtype=bool)
        for j, value in enumerate(batch):
            body = io.BytesIO(value)
            body.seek(HEADER.size)
            try:
                record = schemaless_reader(body, writer.fast, None if writer is reader else reader.fast)
            except Exception as exc:  # noqa: BLE001 - any body error is this record's failure
                reason = "incompatible_schema" if "Resolution" in type(exc).__name__ else "malformed_avro"
                failures.append(Failure(members[j], "decode", reason,
                                        f"schema id {writer.id}: {type(exc).__name__}: {exc}", type(exc).__name__))
                continue
            if body.tell() != len(value):
                failures.append(Failure(members[j], "decode", "malformed_avro",
                                        f"{len(value) - body.tell()} trailing bytes after the Avro record"))
                continue
            records.append(cast(dict[str, Any], record))
            good[j] = True
        return columns_from_records(records, self.fields), good
