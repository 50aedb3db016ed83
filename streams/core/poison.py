"""Poison records: what every driftline reader does with a record it cannot use.

A topic is shared with whoever can write to it, so no record on it may stop
the process that reads it: a crash on a record is a crash loop, because the
record is still there after the restart. Every reader therefore parses with
a function that never raises for any bytes and returns a :class:`Skip` (why
not) instead of a value; the reader hands the skip to a :class:`SkipLog`,
which counts it (``driftline_records_skipped_total{topic,reason}`` where the
process has metrics) and logs it with its position, without flooding the log
when a topic is full of them.

``reason`` is a small fixed vocabulary (it is a metric label);
``detail`` says what exactly was wrong, for the log and alerts.
"""

from __future__ import annotations

import json
import logging
import reprlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode
from driftline.schemas.errors import SchemaUnavailable

DETAIL_CHARS = 300  # a detail is cut here: records are untrusted and may be huge
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
REMEMBERED = 10_000  # positions of skipped records remembered, so a re-read is not counted twice


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that was not used: ``reason`` (a metric label) and ``detail`` (what was wrong)."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return "skipped"


class BadRecord(ValueError):
    """Raised inside parsers; a reader's parse function turns it into a :class:`Skip`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:DETAIL_CHARS]

    def skip(self) -> Skip:
        return Skip(self.reason, self.detail)


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """Where a skipped record was, and why it was skipped."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    skip: Skip

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def brief(value: Any) -> str:
    """A short repr of untrusted data, whatever its size or nesting (for details and logs)."""
    return _REPR.repr(value)


MAX_NAME = 200  # model, version and column names: directory names, metric labels


def printable_name(value: Any, what: str, reason: str) -> str:
    """``value`` if it is a name fit for metric labels and logs (printable, no lone surrogates); else BadRecord."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
        raise BadRecord(reason, f"{what} must be a non-empty printable string of at most {MAX_NAME} characters")
    return value


def load_json(value: bytes | None) -> Any:
    """JSON of a record value; :class:`BadRecord` for a tombstone, bad UTF-8, bad JSON or JSON nested too deep."""
    if value is None:
        raise BadRecord("tombstone", "the record has no value (a tombstone)")
    try:
        return json.loads(value)
    except RecursionError:
        raise BadRecord("malformed_json", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadRecord("malformed_json", f"not JSON: {exc}") from None


def decode_avro(catalog: SchemaCatalog, value: bytes | None, subjects: tuple[str, ...]) -> dict[str, Any]:
    """A framed Avro record of one of ``subjects`` (timestamps as epoch ms); :class:`BadRecord` for anything else."""
    if value is None:
        raise BadRecord("tombstone", "the record has no value (a tombstone)")
    try:
        schema, record = decode(catalog, value, fast=True)
    except KeyError as exc:
        raise BadRecord("unknown_schema", f"{exc.args[0] if exc.args else exc}") from None
    except SchemaUnavailable as exc:
        raise BadRecord("registry_unavailable", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - fastavro raises many unrelated types on arbitrary bytes
        raise BadRecord("malformed_avro", f"not a framed Avro record: {type(exc).__name__}: {exc}") from None
    if schema.subject not in subjects:
        raise BadRecord("wrong_schema", f"a {schema.subject} record, not {' or '.join(subjects)}")
    if not isinstance(record, dict):
        raise BadRecord("wrong_schema", f"a {type(record).__name__}, not a record")
    return record


class _Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Counter(Protocol):
    def labels(self, *labels: str) -> _Inc: ...


class SkipLog:
    """Counts and logs skipped records of one process.

    Each (topic, reason) is logged at WARNING the first time, with the
    record's position and detail; after that at most once every ``every_s``
    seconds, with how many more were skipped since: a topic flooded with
    poison does not flood the log. ``counter`` is the process's
    ``metrics.skipped`` (None where it has no metrics); without one, the
    counts wait in :meth:`drain` for whoever has the metrics. ``keep`` skipped
    records (the newest) are kept for :meth:`drain` too, for callers that
    raise alerts about them. A record read again (the trainer re-reads
    ``{ns}.labeled``, a rebalance redelivers) is counted and logged once.
    """

    def __init__(self, logger: logging.Logger, counter: _Counter | None = None, *, keep: int = 0,
                 every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.counter = counter
        self.every_s = every_s
        self.clock = clock
        self._uncounted: Counter[tuple[str, str]] = Counter()
        self._kept: deque[SkippedRecord] = deque(maxlen=keep)
        self._logged_at: dict[tuple[str, str], float] = {}
        self._since: Counter[tuple[str, str]] = Counter()
        self._seen: set[tuple[str, int, int]] = set()
        self._seen_order: deque[tuple[str, int, int]] = deque()

    def skip(self, topic: str, partition: int | None, offset: int | None, key: bytes | None, why: Skip) -> Skip:
        """Count and log one skipped record (once: a reader that reads it again is not counted again)."""
        rec = SkippedRecord(topic, int(partition or 0), int(offset or 0), key, why)
        where = (rec.topic, rec.partition, rec.offset)
        if where in self._seen:
            return why
        self._seen.add(where)
        self._seen_order.append(where)
        if len(self._seen_order) > REMEMBERED:
            self._seen.discard(self._seen_order.popleft())
        label = (topic, why.reason)
        if self.counter is not None:
            self.counter.labels(topic, why.reason).inc()
        else:
            self._uncounted[label] += 1
        self._kept.append(rec)
        now = self.clock()
        last = self._logged_at.get(label)
        if last is None or now - last >= self.every_s:
            more = self._since.pop(label, 0)
            self.logger.warning("skipped the record at %s (%s): %s%s", rec.position, why.reason, why.detail,
                                f" ({more} more like it skipped since the last report)" if more else "")
            self._logged_at[label] = now
        else:
            self._since[label] += 1
        return why

    def drain(self) -> tuple[Counter[tuple[str, str]], list[SkippedRecord]]:
        """Counts by (topic, reason) not yet added to a counter, and the kept records; both are emptied."""
        counts, kept = self._uncounted, list(self._kept)
        self._uncounted = Counter()
        self._kept.clear()
        return counts, kept
