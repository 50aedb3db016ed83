"""Alerts and retrain events: the typed records of ``{ns}.alerts`` and ``{ns}.retrain``.

The one module that builds, identifies, encodes, decodes and prints them, so
an id or a field means the same to every producer and every reader.
Timestamps are epoch milliseconds throughout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.codec import HEADER, encode
from driftline.streams.core.poison import BadRecord, Skip, brief, decode_avro

ALERT_SUBJECT = "driftline.Alert"
RETRAIN_SUBJECT = "driftline.RetrainRequest"
EVENT_SUBJECTS = (ALERT_SUBJECT, RETRAIN_SUBJECT)

#: What driftline's producers write; records read back keep any string (other producers share the topics).
Severity = Literal["warning", "critical"]
Stage = Literal["requested", "training", "registered", "shadow", "promoted", "rejected", "failed"]

_COLOURS = {"critical": "\x1b[1;31m", "warning": "\x1b[33m", "retrain": "\x1b[1;35m"}
_RESET = "\x1b[0m"


def event_id(*parts: str) -> str:
    """The id of an alert or retrain event: a hash of what identifies it.

    Deterministic, so the same event raised again (a window redone after a
    restart, a record read by every worker) keeps its id and consumers dedupe.
    """
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BinShift:
    """One histogram bin whose share moved most: its label, reference and current share."""

    bin: str
    reference: float
    current: float


@dataclass(frozen=True, slots=True)
class Alert:
    """A ``driftline.Alert``: something the people on call should know about a model."""

    SUBJECT: ClassVar[str] = ALERT_SUBJECT

    id: str
    model: str
    model_version: str
    kind: str
    severity: str
    feature: str | None
    statistic: str
    value: float
    threshold: float
    window_start: int
    window_end: int
    sample_size: int
    reference_size: int
    top_bins: tuple[BinShift, ...]
    message: str
    created_at: int
    #: data_drift (alert v2): the effect on the score, the rank among the window's drifted features and their number
    impact: float | None = None
    impact_rank: int | None = None
    drifted_features: int | None = None

    def to_avro(self) -> dict[str, Any]:
        """The record as the fast (logical-type-free) schema takes it (a v1 writer ignores the v2 fields)."""
        return {
            "id": self.id, "model": self.model, "model_version": self.model_version, "kind": self.kind,
            "severity": self.severity, "feature": self.feature, "statistic": self.statistic,
            "value": float(self.value), "threshold": float(self.threshold), "window_start": self.window_start,
            "window_end": self.window_end, "sample_size": self.sample_size, "reference_size": self.reference_size,
            "top_bins": [{"bin": b.bin, "reference": b.reference, "current": b.current} for b in self.top_bins],
            "message": self.message, "created_at": self.created_at, "impact": self.impact,
            "impact_rank": self.impact_rank, "drifted_features": self.drifted_features,
        }

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> Alert:
        """From a decoded record; BadRecord (wrong_schema) when a field is missing or of another type.

        The subject may have schemas registered by others: a decoded record
        is checked, not trusted. Fields with a default in alert.v1 take it,
        and a v1 record has no impact, rank or count of drifted features.
        """
        impact = _field(rec, "impact", (int, float, type(None)), None)
        rank = _field(rec, "impact_rank", (int, type(None)), None)
        count = _field(rec, "drifted_features", (int, type(None)), None)
        if any(isinstance(v, bool) for v in (impact, rank, count)):
            raise BadRecord("wrong_schema", "impact, impact_rank and drifted_features are numbers, not booleans")
        bins = _field(rec, "top_bins", list, [])
        return cls(
            _text(rec, "id"), _text(rec, "model"), _text(rec, "model_version"), _text(rec, "kind"),
            _text(rec, "severity"), _field(rec, "feature", (str, type(None)), None), _text(rec, "statistic"),
            _number(rec, "value"), _number(rec, "threshold"), _millis(rec, "window_start"),
            _millis(rec, "window_end"), _long(rec, "sample_size"), _long(rec, "reference_size"),
            tuple(_bin(b) for b in bins), _text(rec, "message"), _millis(rec, "created_at"),
            None if impact is None else float(impact), rank, count,
        )


@dataclass(frozen=True, slots=True)
class RetrainEvent:
    """A ``driftline.RetrainRequest``: a request to train a challenger, at one of its stages."""

    SUBJECT: ClassVar[str] = RETRAIN_SUBJECT

    id: str
    model: str
    model_version: str
    stage: str
    reason: str
    alert_ids: tuple[str, ...]
    data_start: int
    data_end: int
    requested_at: int
    candidate_version: str | None = None

    def to_avro(self) -> dict[str, Any]:
        """The record as the fast (logical-type-free) schema takes it."""
        return {
            "id": self.id, "model": self.model, "model_version": self.model_version, "stage": self.stage,
            "reason": self.reason, "alert_ids": list(self.alert_ids), "data_start": self.data_start,
            "data_end": self.data_end, "requested_at": self.requested_at,
            "candidate_version": self.candidate_version,
        }

    @classmethod
    def from_avro(cls, rec: Mapping[str, Any]) -> RetrainEvent:
        """From a decoded record (v1 has no candidate_version); BadRecord (wrong_schema) for another shape."""
        ids = _field(rec, "alert_ids", list, [])
        if not all(isinstance(i, str) for i in ids):
            raise BadRecord("wrong_schema", "alert_ids must be strings")
        return cls(
            _text(rec, "id"), _text(rec, "model"), _text(rec, "model_version"),
            _field(rec, "stage", str, "requested"), _text(rec, "reason"), tuple(ids),
            _millis(rec, "data_start"), _millis(rec, "data_end"), _millis(rec, "requested_at"),
            _field(rec, "candidate_version", (str, type(None)), None),
        )

    def advance(self, stage: Stage, reason: str, now_ms: int, candidate: str | None = None) -> RetrainEvent:
        """The same request at a later stage: same id and data, so the stages of one request stay together."""
        return replace(self, stage=stage, reason=reason, candidate_version=candidate, requested_at=now_ms)


Event = Alert | RetrainEvent


def point_alert(model: str, version: str, kind: str, statistic: str, value: float, threshold: float, message: str,
                now_ms: int, *, sample_size: int = 0, scope: tuple[str, ...] = (), severity: Severity = "critical",
                ) -> Alert:
    """An alert about a moment, not a drift window (a refused load, a quality verdict).

    Its id hashes model, version, ``scope`` (the variant, say), kind and time,
    so the same event sent twice keeps one id.
    """
    return Alert(id=event_id(model, version, *scope, kind, str(now_ms)), model=model, model_version=version,
                 kind=kind, severity=severity, feature=None, statistic=statistic, value=float(value),
                 threshold=float(threshold), window_start=now_ms, window_end=now_ms, sample_size=int(sample_size),
                 reference_size=0, top_bins=(), message=message, created_at=now_ms)


def retrain_request(model: str, version: str, reason: str, alert_ids: tuple[str, ...], data_start: int,
                    data_end: int, now_ms: int, *, cause: tuple[str, ...]) -> RetrainEvent:
    """A new request (stage ``requested``); its id hashes model, version and ``cause``, so a redo keeps it."""
    return RetrainEvent(id=event_id(model, version, *cause), model=model, model_version=version, stage="requested",
                        reason=reason, alert_ids=tuple(alert_ids), data_start=data_start, data_end=data_end,
                        requested_at=now_ms, candidate_version=None)


def encode_event(target: SchemaCatalog | WireSchema, event: Event) -> bytes:
    """Framed Avro bytes of ``event`` with its subject's schema (the latest, given a catalog)."""
    schema = target.latest(event.SUBJECT) if isinstance(target, SchemaCatalog) else target
    if schema.subject != event.SUBJECT:
        raise ValueError(f"a {type(event).__name__} is written with {event.SUBJECT}, not {schema.subject}")
    return encode(schema, event.to_avro(), fast=True)


def read_event(catalog: SchemaCatalog, value: bytes | None) -> Event | Skip:
    """An alert or retrain event from ``{ns}.alerts``/``{ns}.retrain``, or why not.

    Never raises: readers of these topics (``driftline alerts``) print what
    they can and skip the rest.
    """
    try:
        return _decode(catalog, value, EVENT_SUBJECTS)
    except BadRecord as exc:
        return exc.skip()


def read_alert(catalog: SchemaCatalog, value: bytes | None) -> Alert | Skip:
    """An alert (a retrain event is wrong_schema here), or why not; never raises."""
    try:
        got = _decode(catalog, value, (ALERT_SUBJECT,))
    except BadRecord as exc:
        return exc.skip()
    return got if isinstance(got, Alert) else Skip("wrong_schema", "not an alert")


def read_retrain(catalog: SchemaCatalog, value: bytes | None) -> RetrainEvent | Skip:
    """A retrain event (an alert is wrong_schema here), or why not; never raises."""
    try:
        got = _decode(catalog, value, (RETRAIN_SUBJECT,))
    except BadRecord as exc:
        return exc.skip()
    return got if isinstance(got, RetrainEvent) else Skip("wrong_schema", "not a retrain event")


def _decode(catalog: SchemaCatalog, value: bytes | None, subjects: tuple[str, ...]) -> Event:
    rec = decode_avro(catalog, value, subjects)
    schema = catalog.by_id(HEADER.unpack_from(value or b"")[1])  # decode_avro read this very header
    if schema is not None and schema.subject == ALERT_SUBJECT:
        return Alert.from_avro(rec)
    return RetrainEvent.from_avro(rec)


def millis(value: Any) -> int:
    """An Avro timestamp-millis as epoch ms: the full schema decodes datetimes, the fast one ints."""
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value)


def _when(ms: int) -> str:
    """HH:MM:SS of an epoch-ms timestamp; ``??:??:??`` for one no calendar has (records are untrusted)."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return "??:??:??"


def format_event(event: Event, *, colour: bool = False) -> str:
    """An alert or a retrain event as one line, for people on call."""
    if isinstance(event, Alert):
        level = event.severity
        text = (f"{_when(event.window_end)} {level.upper():8} {event.kind:16} {event.model} "
                f"v{event.model_version} {event.message} (n={event.sample_size})")
    else:
        level = "retrain"
        candidate = event.candidate_version
        text = (f"{_when(event.requested_at)} RETRAIN  {event.stage:16} {event.model} "
                f"v{event.model_version}{f' → v{candidate}' if candidate else ''}: {event.reason}"
                f" ({len(event.alert_ids)} alerts)")
    return f"{_COLOURS.get(level, '')}{text}{_RESET}" if colour else text


# -- checked fields of decoded records ----------------------------------------------------------------------------

_MISSING = object()


def _field(rec: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    value = rec.get(name, default)
    if value is _MISSING:
        raise BadRecord("wrong_schema", f"no field {name!r}")
    if not isinstance(value, kind):
        raise BadRecord("wrong_schema", f"{name} is {brief(value)}, of another type than the schema's")
    return value


def _text(rec: Mapping[str, Any], name: str) -> str:
    return str(_field(rec, name, str))


def _long(rec: Mapping[str, Any], name: str) -> int:
    value = _field(rec, name, int)
    if isinstance(value, bool):
        raise BadRecord("wrong_schema", f"{name} is a boolean, not a long")
    return int(value)


def _number(rec: Mapping[str, Any], name: str) -> float:
    value = _field(rec, name, (int, float))
    if isinstance(value, bool):
        raise BadRecord("wrong_schema", f"{name} is a boolean, not a number")
    return float(value)


def _millis(rec: Mapping[str, Any], name: str) -> int:
    value = _field(rec, name, (int, datetime))
    if isinstance(value, bool):
        raise BadRecord("wrong_schema", f"{name} is a boolean, not a timestamp")
    try:
        return millis(value)
    except (ValueError, OverflowError, OSError) as exc:
        raise BadRecord("wrong_schema", f"{name}: {exc}") from None


def _bin(value: Any) -> BinShift:
    if not isinstance(value, Mapping):
        raise BadRecord("wrong_schema", "top_bins must be records")
    return BinShift(_text(value, "bin"), _number(value, "reference"), _number(value, "current"))
