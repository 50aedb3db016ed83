"""Joining late labels to the predictions they judge, by request id, with a time to live.

Pure and clock-driven: the feedback agent hands in scored records and labels
as they arrive (with the partition they came from) and gets back joined
pairs, and, as time passes, the labels that found no prediction (dead
letters, reason ``no_prediction``).

The cases, explicitly:

- a label after its prediction, within ``ttl_ms``: joined;
- a label before its prediction (out of order): it waits up to ``ttl_ms``;
- a second label for a request already joined: a duplicate, counted once
  and dropped (the first label wins);
- a prediction scored twice (at-least-once after a restart): the first wins;
- a request scored by several versions (a shadow next to the champion): the
  label joins each of them, whichever comes first;
- a label whose prediction never comes, or came more than ``ttl_ms``
  earlier: after ``ttl_ms`` it is unmatched and goes to the dead letters.

Bounded: at most ``max_entries`` entries and ``max_bytes`` estimated bytes.
Beyond either, the oldest entries are evicted: a waiting label is returned
by :meth:`FeedbackJoin.take_overflowed` (the agent dead-letters it with
reason ``join_overflow``), evicted predictions and joins are counted. Every
label is counted in exactly one of joined, duplicate, unmatched, overflow or
waiting (tests reconcile the counts).

Time-ordered: each partition keeps its entries in one ``OrderedDict`` in
insertion order, with a clock that never goes backwards, so expiry and
eviction take entries from the front: the work is proportional to what
leaves, and :meth:`FeedbackJoin.expire` does at most ``limit`` of it per call.
A full scan of 2M entries took 1.8 s on the event loop; a call now touches a
chunk.

Restartable: the waiting entries (labels and predictions, not the joined
requests) are what a restart must not lose. The join records which
(partition, request id) changed (:meth:`FeedbackJoin.take_changed`); the
agent writes their current state as :class:`StateRecord` on
``{ns}.feedback-state`` and, on a partition's assignment, hands the records
back to :meth:`FeedbackJoin.restore_label` and
:meth:`FeedbackJoin.restore_predictions`, with their original insertion time.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

EXPIRE_CHUNK = 1_000  # entries one expire() call removes at most: about 3 ms (bench/join_memory.py)

# Estimated bytes of one entry beyond its variable-length parts (request id, raw record, features): the objects,
# the OrderedDict slot and node. Measured with RSS by bench/join_memory.py (see bench/RESULTS.md).
LABEL_BYTES = 524
PREDICTION_BYTES = 506  # a request's first prediction; each further version adds SCORED_BYTES
SCORED_BYTES = 300
DONE_BYTES = 507

KINDS = ("predictions", "labels", "joined")  # the gauge's kinds, in the order of Pending, Waiting, Done


@dataclass(frozen=True, slots=True)
class Scored:
    request_id: str
    model: str
    version: str
    variant: str
    score: float
    predicted: str | None
    event_time: int
    features: bytes = b""  # the model's float32 input row
    sealed: bool = False  # features encrypted (the model reads personal fields): passed on as it came
    segments: str | None = None  # the request's segment values, joined (see driftline.detectors.fairness)


@dataclass(frozen=True, slots=True)
class Label:
    request_id: str
    label: str | None  # the true class for classifiers
    target: float | None  # the true value for regressors
    event_time: int
    raw: tuple[bytes | None, bytes | None] | None = None  # the consumed (key, value), for dead letters and state


@dataclass(frozen=True, slots=True)
class Joined:
    scored: Scored
    label: Label
    label_delay_ms: int  # label event time minus request event time


@dataclass(frozen=True, slots=True)
class Pending:
    """Predictions of one request (one per version and variant) waiting for its label."""

    scored: tuple[Scored, ...]
    at: int  # when the first one entered the join


@dataclass(frozen=True, slots=True)
class Waiting:
    """A label waiting for its prediction."""

    label: Label
    at: int


@dataclass(frozen=True, slots=True)
class Done:
    """A joined request, remembered for the TTL: later labels are duplicates, later versions join too.

    Holds the label without its raw record (only a dead letter needs it) and is not persisted: after a
    restart a duplicate label for it waits, then goes to the dead letters.
    """

    label: Label
    seen: tuple[tuple[str, str], ...]  # (version, variant) already joined (a tuple: a frozenset weighs 216 B)
    at: int  # when it was joined


Entry = Pending | Waiting | Done


def entry_bytes(rid: str, e: Entry) -> int:
    """Estimated bytes an entry holds (see the constants above); a pure function of its content."""
    if isinstance(e, Waiting):
        raw = e.label.raw
        return LABEL_BYTES + len(rid) + (len(raw[0] or b"") + len(raw[1] or b"") if raw is not None else 0)
    if isinstance(e, Pending):
        size = PREDICTION_BYTES - SCORED_BYTES + len(rid)
        for s in e.scored:
            size += SCORED_BYTES + len(s.features) + len(s.segments or "")
        return size
    return DONE_BYTES + len(rid)


_KIND_OF_ENTRY: dict[type, str] = {Pending: "predictions", Waiting: "labels", Done: "joined"}


@dataclass
class JoinCounts:
    labels: int = 0
    joined: int = 0
    duplicates: int = 0
    unmatched: int = 0
    overflow: int = 0  # waiting labels evicted because the join was full
    restored_labels: int = 0  # waiting labels read back from the state topic
    duplicate_predictions: int = 0
    expired_predictions: int = 0
    evicted_predictions: int = 0  # predictions evicted because the join was full
    evicted_joined: int = 0  # joined requests forgotten early because the join was full
    restored_predictions: int = 0


@dataclass
class _Partition:
    """One input partition's entries, oldest first, and its clock."""

    entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    last_at: int = 0  # insertion times never go backwards, so the front is always the oldest
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes: int = 0

    def front_at(self) -> int:
        return next(iter(self.entries.values())).at


@dataclass
class FeedbackJoin:
    """The join of one worker: its partitions' entries, bounded, expired incrementally."""

    ttl_ms: int
    max_entries: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    parts: dict[int, _Partition] = field(default_factory=dict)
    counts: JoinCounts = field(default_factory=JoinCounts)
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # entries per kind
    count: int = 0  # entries of every kind
    bytes: int = 0  # estimated bytes of every entry
    examined: int = 0  # entries expire() looked at, in total: its work
    behind: bool = False  # the last expire() stopped at its limit: more is due now
    _overflowed: list[Label] = field(default_factory=list)
    _changed: dict[tuple[int, str], None] = field(default_factory=dict)  # waiting state changed (ordered set)

    # -- the join ---------------------------------------------------------------------------------------------

    def add_prediction(self, s: Scored, now_ms: int, partition: int = 0) -> list[Joined]:
        part = self._part(partition)
        rid, which = s.request_id, (s.version, s.variant)
        e = part.entries.get(rid)
        if isinstance(e, Done):  # the label is here already: join this version too, once
            if which in e.seen:
                self.counts.duplicate_predictions += 1
                return []
            self._replace(part, rid, e, Done(e.label, (*e.seen, which), e.at))
            return [Joined(s, e.label, e.label.event_time - s.event_time)]
        if isinstance(e, Waiting):
            return self._join(partition, (s,), e.label, now_ms)
        if e is None:
            self._insert(partition, rid, Pending((s,), self._clock(part, now_ms)))
        elif any((p.version, p.variant) == which for p in e.scored):
            self.counts.duplicate_predictions += 1
        else:
            self._replace(part, rid, e, Pending((*e.scored, s), e.at))
            self._changed[(partition, rid)] = None
        self._bound()
        return []

    def add_label(self, label: Label, now_ms: int, partition: int = 0) -> list[Joined]:
        self.counts.labels += 1
        part = self._part(partition)
        rid = label.request_id
        e = part.entries.get(rid)
        if isinstance(e, Done | Waiting):
            self.counts.duplicates += 1
            return []
        if isinstance(e, Pending):
            return self._join(partition, e.scored, label, now_ms)
        self._insert(partition, rid, Waiting(label, self._clock(part, now_ms)))
        self._bound()
        return []

    def expire(self, now_ms: int, limit: int = EXPIRE_CHUNK) -> list[Label]:
        """Forget predictions and joins older than the TTL; return the labels that waited in vain.

        Takes at most ``limit`` entries, from the front of each partition
        (the oldest): the work is what expires plus one look per partition.
        ``behind`` says whether the limit stopped it.
        """
        cutoff = now_ms - self.ttl_ms
        unmatched: list[Label] = []
        budget = limit
        for p, part in self.parts.items():
            entries = part.entries
            while entries and budget > 0:
                self.examined += 1
                rid, e = next(iter(entries.items()))
                if e.at > cutoff:
                    break
                entries.popitem(last=False)
                budget -= 1
                self._forget(part, rid, e)
                if isinstance(e, Waiting):
                    unmatched.append(e.label)
                    self._changed[(p, rid)] = None
                elif isinstance(e, Pending):
                    self.counts.expired_predictions += 1
                    self._changed[(p, rid)] = None
        self.behind = budget == 0
        self.counts.unmatched += len(unmatched)
        return unmatched

    # -- state: what changed, what a restart reads back, what a revocation drops ------------------------------------

    def take_changed(self) -> list[tuple[int, str]]:
        """(partition, request id) whose waiting entry appeared, changed or left since the last call."""
        out = list(self._changed)
        self._changed.clear()
        return out

    def take_overflowed(self) -> list[Label]:
        """Waiting labels evicted since the last call (the join was full): for the dead letters."""
        out, self._overflowed = self._overflowed, []
        return out

    def waiting_entry(self, partition: int, rid: str) -> Pending | Waiting | None:
        """The request's waiting label or predictions in ``partition``, if any (what the state topic should hold)."""
        part = self.parts.get(partition)
        e = None if part is None else part.entries.get(rid)
        return e if isinstance(e, Pending | Waiting) else None

    def owns(self, partition: int) -> bool:
        return partition in self.parts

    def assign(self, partition: int) -> None:
        """Start holding ``partition`` (empty until restored)."""
        self._part(partition)

    def restore_label(self, partition: int, label: Label, at: int) -> None:
        """A waiting label read back from the state topic, with its original insertion time.

        Restore a partition's records oldest first, before its first new record: the clock keeps the order.
        """
        part = self._part(partition)
        if label.request_id in part.entries:
            return  # what this process saw since wins
        self.counts.restored_labels += 1
        self._insert(partition, label.request_id, Waiting(label, self._clock(part, at)), changed=False)
        self._bound()

    def restore_predictions(self, partition: int, scored: tuple[Scored, ...], at: int) -> None:
        """Waiting predictions of one request read back from the state topic (see :meth:`restore_label`)."""
        if not scored:
            return
        part = self._part(partition)
        rid = scored[0].request_id
        if rid in part.entries:
            return
        self.counts.restored_predictions += len(scored)
        self._insert(partition, rid, Pending(scored, self._clock(part, at)), changed=False)
        self._bound()

    def drop(self, partition: int) -> None:
        """Forget a partition that moved to another member: its state is on the state topic, for the next owner."""
        part = self.parts.pop(partition, None)
        if part is None:
            return
        for kind, n in part.held.items():
            self.held[kind] -= n
            self.count -= n
        self.bytes -= part.bytes
        for key in [k for k in self._changed if k[0] == partition]:
            del self._changed[key]

    @property
    def size(self) -> int:
        return self.count

    @property
    def waiting(self) -> dict[str, Label]:
        """Every waiting label by request id (a copy, for inspection and tests)."""
        return {rid: e.label for part in self.parts.values() for rid, e in part.entries.items()
                if isinstance(e, Waiting)}

    def entries(self) -> Iterator[tuple[int, str, Entry]]:
        for p, part in self.parts.items():
            for rid, e in part.entries.items():
                yield p, rid, e

    # -- internals --------------------------------------------------------------------------------------------

    def _part(self, partition: int) -> _Partition:
        part = self.parts.get(partition)
        if part is None:
            part = self.parts[partition] = _Partition()
        return part

    @staticmethod
    def _clock(part: _Partition, now_ms: int) -> int:
        """``now_ms``, or the partition's last insertion time if the wall clock stepped back."""
        if now_ms < part.last_at:
            return part.last_at
        part.last_at = now_ms
        return now_ms

    def _join(self, partition: int, scored: tuple[Scored, ...], label: Label, now_ms: int) -> list[Joined]:
        """Replace the request's waiting entry by a Done one; the joined pairs."""
        part = self.parts[partition]
        rid = label.request_id
        old = part.entries.pop(rid, None)
        if old is not None:
            self._forget(part, rid, old)
            self._changed[(partition, rid)] = None
        kept = Label(rid, label.label, label.target, label.event_time)  # the raw record is not needed any more
        seen = tuple((s.version, s.variant) for s in scored)
        self._insert(partition, rid, Done(kept, seen, self._clock(part, now_ms)))
        self.counts.joined += 1
        self._bound()
        return [Joined(s, label, label.event_time - s.event_time) for s in scored]

    def _insert(self, partition: int, rid: str, e: Entry, *, changed: bool = True) -> None:
        """Append an entry (the newest of its partition); ``changed``: its state record must be written."""
        part = self.parts[partition]
        part.entries[rid] = e
        size, kind = entry_bytes(rid, e), _KIND_OF_ENTRY[type(e)]
        part.held[kind] += 1
        self.held[kind] += 1
        self.count += 1
        part.bytes += size
        self.bytes += size
        if changed and not isinstance(e, Done):
            self._changed[(partition, rid)] = None

    def _replace(self, part: _Partition, rid: str, old: Entry, new: Entry) -> None:
        """Same request, same place in the order, new content (another version)."""
        part.entries[rid] = new
        delta = entry_bytes(rid, new) - entry_bytes(rid, old)
        part.bytes += delta
        self.bytes += delta

    def _forget(self, part: _Partition, rid: str, e: Entry) -> None:
        """Account for an entry already taken out of ``part.entries``."""
        size, kind = entry_bytes(rid, e), _KIND_OF_ENTRY[type(e)]
        part.held[kind] -= 1
        self.held[kind] -= 1
        self.count -= 1
        part.bytes -= size
        self.bytes -= size

    def _bound(self) -> None:
        """Evict the oldest entries (of any partition) while the join holds too many or too many bytes."""
        while self.count > self.max_entries or self.bytes > self.max_bytes:
            p, part = min(((p, q) for p, q in self.parts.items() if q.entries), key=lambda pq: pq[1].front_at())
            rid, e = part.entries.popitem(last=False)
            self._forget(part, rid, e)
            if isinstance(e, Waiting):
                self.counts.overflow += 1
                self._overflowed.append(e.label)
                self._changed[(p, rid)] = None
            elif isinstance(e, Pending):
                self.counts.evicted_predictions += len(e.scored)
                self._changed[(p, rid)] = None
            else:
                self.counts.evicted_joined += 1


# -- the state topic's records ------------------------------------------------------------------------------------

STATE_FORMAT = 1
STATE_LABEL, STATE_PREDICTIONS = "label", "predictions"
_KIND_BYTE = {STATE_LABEL: b"L", STATE_PREDICTIONS: b"P"}
_KIND_OF = {v[0]: k for k, v in _KIND_BYTE.items()}
_HEAD = struct.Struct(">BcqI")  # format, kind, insertion time (ms), number of items
_LEN = struct.Struct(">i")  # an item's length, -1 for None


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One waiting entry as stored on ``{ns}.feedback-state``, keyed by request id: enough to rebuild it.

    ``items``: a label's consumed (key, value); or the Avro ``driftline.Scored``
    record of each waiting prediction of the request. One record per request
    (a request is either waiting for its label or waiting with its label, never
    both), so the key is the request id, the same key as the inputs: the
    producer's partitioner puts it on the input's partition number.
    """

    kind: str  # STATE_LABEL or STATE_PREDICTIONS
    request_id: str
    at: int  # when the entry entered the join (ms): expiry goes on from there after a restart
    items: tuple[bytes | None, ...]


def encode_state(rec: StateRecord) -> tuple[bytes, bytes]:
    """(key, value) of a state record."""
    parts = [_HEAD.pack(STATE_FORMAT, _KIND_BYTE[rec.kind], rec.at, len(rec.items))]
    for item in rec.items:
        parts.append(_LEN.pack(-1 if item is None else len(item)))
        if item is not None:
            parts.append(item)
    return rec.request_id.encode(), b"".join(parts)


def decode_state(key: bytes, value: bytes) -> StateRecord:
    """The inverse of :func:`encode_state`; ValueError for anything else."""
    if len(value) < _HEAD.size or value[0] != STATE_FORMAT:
        raise ValueError(f"not a feedback state record of format {STATE_FORMAT} ({len(value)} bytes)")
    _, kind, at, n = _HEAD.unpack_from(value)
    if kind[0] not in _KIND_OF:
        raise ValueError(f"unknown feedback state kind {kind!r}")
    pos = _HEAD.size
    items: list[bytes | None] = []
    for _ in range(n):
        if pos + _LEN.size > len(value):
            raise ValueError("truncated feedback state record")
        (size,) = _LEN.unpack_from(value, pos)
        pos += _LEN.size
        if size < 0:
            items.append(None)
            continue
        if pos + size > len(value):
            raise ValueError("truncated feedback state record")
        items.append(value[pos:pos + size])
        pos += size
    if pos != len(value):
        raise ValueError(f"{len(value) - pos} stray bytes after a feedback state record")
    return StateRecord(_KIND_OF[kind[0]], key.decode(), at, tuple(items))
