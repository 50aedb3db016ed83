"""The score path for one batch, as a pure function of the messages and the clock.

Kafka stays outside: the worker hands in :class:`RawMessage` objects and gets
back the records to produce (predictions and dead letters). One decode pass,
one validation pass, one ONNX call per model, one encode pass per batch.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple, cast

import numpy as np

from driftline.detectors.explain import picked
from driftline.detectors.fairness import join_values, segment_text
from driftline.detectors.sketch import WindowSketch
from driftline.inference.deployment import CHAMPION, SHADOW, Deployment, key_buckets
from driftline.inference.errors import ModelError
from driftline.inference.manifest import input_mismatch
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.codec import BatchDecoder, BatchEncoder, Failure
from driftline.schemas.columnar import Columns
from driftline.schemas.pii import Redactor, personal_fields, pseudonym
from driftline.schemas.profile import CategoricalFeature
from driftline.schemas.validation import ModelBatch, ValidatedBatch, Validator
from driftline.streams.core.deadletters import ERROR_HEADER, EXCEPTION_CLASS, MAX_MESSAGE_CHARS, Headers, bound_record
from driftline.streams.core.sealing import seal_rows
from driftline.streams.core.windows import WindowFolder

log = logging.getLogger(__name__)
MAX_LAG_S = 10 * 365 * 86_400.0  # event-time lag is clipped here: an absurd event_time must not wreck the histogram


class RawMessage(NamedTuple):
    """One consumed Kafka record, as the pipeline sees it.

    A named tuple, like :class:`OutRecord`: one is made per record, and a
    tuple is made in a third of a frozen dataclass's time (~0.3 µs less).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None
    timestamp_ms: int = 0
    header_error: str | None = None  # the headers could not be read: the record is dead-lettered


class OutRecord(NamedTuple):
    """One record to produce (see :class:`RawMessage` on why a named tuple)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] | None = None


_new_out = partial(tuple.__new__, OutRecord)
_timestamp_of = operator.attrgetter("timestamp_ms")  # of a RawMessage
_topic_of = operator.attrgetter("topic")
_header_error_of = operator.attrgetter("header_error")


def keyed_records(topic: str, ids: np.ndarray, values: list[bytes]) -> list[OutRecord]:
    """Records to ``topic`` keyed by request id (UTF-8), built without a Python frame each (``map``)."""
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} request ids for {len(values)} encoded values")
    return list(map(_new_out, zip(repeat(topic), map(str.encode, ids.tolist()), values, repeat(None))))


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What one model did with its share of a batch, for metrics."""

    model: str
    version: str
    variant: str
    provider: str
    scored: int
    inference_s: float
    latency_s: np.ndarray  # Kafka record timestamp of the request → prediction produced (records with one)
    scores: np.ndarray
    event_lag_s: np.ndarray = field(default_factory=lambda: np.empty(0))  # the payload's event_time → now


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    predictions: list[OutRecord] = field(default_factory=list)
    deadletters: list[OutRecord] = field(default_factory=list)
    failures: list[tuple[str, Failure]] = field(default_factory=list)
    stats: list[ModelStats] = field(default_factory=list)
    sketches: list[WindowSketch] = field(default_factory=list)
    shadow_predictions: list[OutRecord] = field(default_factory=list)
    scored: list[OutRecord] = field(default_factory=list)
    shadow_errors: list[str] = field(default_factory=list)


class ServedModel:
    """One model on its requests topic: the decoder and validator, and the loaded versions of its deployment.

    All versions of a deployment read the same inputs (checked on
    :meth:`deploy`), so one decode and one validation pass serve them all.
    """

    def __init__(
        self, model: OnnxModel, catalog: SchemaCatalog, *, max_message_bytes: int,
        folder: WindowFolder | None = None,
    ) -> None:
        if not model.ready:
            raise ValueError("load() the model before serving it")
        self.deployment = Deployment(model.name, model.version)
        self.versions: dict[str, OnnxModel] = {model.version: model}
        self.reader: WireSchema = catalog.latest(model.manifest.request_subject)
        model.manifest.check_request(self.reader)
        self.decoder = BatchDecoder(catalog, self.reader, max_message_bytes)
        self.personal = personal_fields(self.reader.raw, model.manifest.personal)
        self.validator = Validator(model.manifest.profile, self.reader, columns=bool(model.manifest.inputs),
                                   personal=self.personal)
        profile = self.validator.profile
        #: the entity key is personal: predictions carry its pseudonym, not the key
        self.key_is_personal = profile.key_field in self.personal
        #: the model's columns that come from personal fields: its input rows travel sealed on {ns}.scored
        self.personal_columns = tuple(f.name for f in profile.features if f.name in self.personal)
        self.folder: WindowFolder | None = None
        self.set_folder(folder)

    def needs_pii_key(self, feedback: bool) -> str | None:
        """Why this model's outputs would carry a personal value without the PII key, or None."""
        if self.key_is_personal:
            return (f"{self.model.name}'s entity key {self.validator.profile.key_field} is personal and every "
                    "prediction carries it")
        if feedback and self.personal_columns:
            return (f"{self.model.name} reads personal fields ({', '.join(self.personal_columns)}) and feedback "
                    "sends its input rows to the trainer")
        return None

    def set_folder(self, folder: WindowFolder | None) -> list[WindowSketch]:
        """Fold into ``folder`` from now on; returns the replaced folder's open window, closed early."""
        old, self.folder = self.folder, folder
        if folder is not None:
            folder.hide(self.personal)
            folder.watch_ids(self.validator.profile.id_field)
            folder.watch_segments(self.model.manifest.segments, self.model.manifest.threshold)
            folder.accept_codes({f.name: f.categories for f in self.validator.profile.features
                                 if isinstance(f, CategoricalFeature)})
        if old is None or old.current is None or not old.current.messages:
            return []
        return [old.current]

    @property
    def model(self) -> OnnxModel:
        """The champion."""
        return self.versions[self.deployment.champion]

    def deploy(self, deployment: Deployment, models: Mapping[str, OnnxModel]) -> list[OnnxModel]:
        """Serve ``deployment`` from the next batch on; returns the versions no longer used (to unload).

        Raises :class:`ModelError` and changes nothing when a version is
        missing, not loaded, or reads other inputs than the current champion.
        """
        if deployment.model != self.model.name:
            raise ModelError(f"deployment of {deployment.model} sent to model {self.model.name}")
        wanted = {v: models.get(v) for v in deployment.versions()}
        for version, m in wanted.items():
            if m is None or not m.ready:
                raise ModelError(f"{deployment.model} v{version} is not loaded")
            reason = input_mismatch(self.model.manifest, m.manifest)
            if reason is not None:
                raise ModelError(f"{deployment.model}: {reason}")
            m.manifest.check_request(self.reader)
        old = self.versions
        self.versions = {v: m for v, m in wanted.items() if m is not None}
        self.deployment = deployment
        # versions with named inputs read feature columns; single-matrix ones need only the matrix
        self.validator.columns = any(m.manifest.inputs for m in self.versions.values())
        return [m for v, m in old.items() if v not in self.versions]


def model_input(checked: ValidatedBatch, model: OnnxModel, rows: np.ndarray | None = None) -> ModelBatch:
    """What ``model`` reads of the valid rows (or of ``rows`` of them): the matrix, or its named inputs' columns."""
    if model.manifest.inputs:
        return checked.feature_columns(rows)
    return checked.matrix if rows is None else checked.matrix[rows]


#: on a dead letter of a model with personal fields: what became of them (``redacted: a,b`` or why they were kept)
PII_HEADER = ERROR_HEADER + "pii"


def error_headers(msg: RawMessage, failure: Failure, model: str, now_ms: int) -> Headers:
    """Kafka-Connect-style error headers (string values) that say where and why."""
    when = datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    added = {
        "topic": msg.topic,
        "partition": str(msg.partition),
        "offset": str(msg.offset),
        "stage": failure.stage,
        "reason": failure.reason,
        EXCEPTION_CLASS: failure.error_class,
        "exception.message": failure.message[:MAX_MESSAGE_CHARS],
        "model": model,
        "timestamp": when,
    }
    return [(ERROR_HEADER + k, v.encode()) for k, v in added.items()]


class ScorePipeline:
    """Turns batches of request messages into prediction and dead-letter records."""

    def __init__(
        self,
        served: Mapping[str, ServedModel],
        prediction_schema: WireSchema,
        *,
        predictions_topic: str,
        deadletter_topic: str,
        deadletter_max_bytes: int,
        shadow_topic: str | None = None,
        scored: tuple[WireSchema, str] | None = None,
        redactor: Redactor | None = None,
        pii_key: bytes | None = None,
        scored_fraction: float = 1.0,
    ) -> None:
        """``scored``: (schema, topic) to also emit each prediction with its input row, for the feedback join.

        ``scored_fraction``: below 1, only the requests the explain agent picks
        (:func:`~driftline.detectors.explain.picked`) go to ``{ns}.scored``: with
        the label join off, explanations need no more, and the score path
        pays for a hash per request instead of a record.

        ``redactor``: re-encodes dead letters of models with personal fields, those fields pseudonymised
        (None: dead letters keep the original bytes, ``deadletter_pii=keep``).

        ``pii_key``: pseudonymises a personal entity key on predictions and seals the input rows of models
        that read personal fields on ``{ns}.scored``; needed when a served model has either.
        """
        needs = [why for s in served.values() if (why := s.needs_pii_key(scored is not None))]
        if needs and pii_key is None:
            raise ValueError(f"{needs[0]}: pass the PII key")
        self.redactor = redactor
        self._pii_key = pii_key or b""
        self._pseudonymised = {s.model.name for s in served.values() if s.key_is_personal}
        self._sealed = {s.model.name for s in served.values() if s.personal_columns}
        self._personal = {s.model.name: (s.personal, s.validator.profile.key_field) for s in served.values()}
        self.served = dict(served)
        self.prediction_schema = prediction_schema
        self._encoder = BatchEncoder(prediction_schema)
        self.predictions_topic = predictions_topic
        self.shadow_topic = shadow_topic or f"{predictions_topic}.shadow"
        self._scored = (BatchEncoder(scored[0]), scored[1]) if scored is not None else None
        self._scored_fraction = scored_fraction
        self.deadletter_topic = deadletter_topic
        self.dlq_max = deadletter_max_bytes

    def process_safely(self, messages: Sequence[RawMessage], now_ms: int) -> BatchOutcome:
        """:meth:`process`, but a batch that raises is redone record by record.

        Whatever in one record makes the scoring code raise (a bug, a model
        that fails on one input) must neither stop the worker nor make a
        restart loop on the same batch: the records that raise on their own
        go to the dead letters (stage ``score``, reason ``internal_error``),
        the others are scored as usual.
        """
        try:
            return self.process(messages, now_ms)
        except Exception as exc:  # noqa: BLE001 - isolated below, record by record
            log.error("a batch of %d records raised %s: %s; scoring it record by record",
                      len(messages), type(exc).__name__, exc)
        out = BatchOutcome()
        for m in messages:
            try:
                one = self.process([m], now_ms)
            except Exception as exc:  # noqa: BLE001 - this record goes to the dead letters
                f = Failure(0, "score", "internal_error", f"{type(exc).__name__}: {exc}", type(exc).__name__)
                self._deadletter(out, m, f, self._model_of(m.topic), now_ms)
                continue
            for name in BatchOutcome.__slots__:
                getattr(out, name).extend(getattr(one, name))
        return out

    def _model_of(self, topic: str) -> str:
        served = self.served.get(topic)
        return served.model.name if served is not None else "-"

    def prepare(self, messages: Sequence[RawMessage]) -> None:
        """Look up the batch's writer schema ids this process does not know (a registry; I/O, off the event loop).

        Without a schema source this does nothing; with one, :meth:`process`
        then decodes without any lookup.
        """
        for topic, served in self.served.items():
            if served.decoder.catalog.source is not None:
                served.decoder.prepare([m.value for m in messages if m.topic == topic])

    def process(self, messages: Sequence[RawMessage], now_ms: int) -> BatchOutcome:
        out = BatchOutcome()
        folds = []
        for topic, msgs in self._by_topic(out, messages, now_ms).items():
            served = self.served.get(topic)
            if served is None:
                for i, m in enumerate(msgs):
                    f = Failure(i, "decode", "unrouted_topic", f"no model serves topic {topic}")
                    self._deadletter(out, m, f, "-", now_ms)
                continue
            before = len(out.failures)
            valid = self._process_model(out, served, msgs, now_ms)
            if served.folder is not None:
                folds.append((served.folder, valid, len(msgs), len(out.failures) - before))
        # Windows fold once every topic of the batch is scored: a batch that raises is redone record by
        # record (process_safely), and a topic folded before the raise would be counted twice.
        for folder, valid, count, dead in folds:
            cols, rows, scores, codes = valid if valid is not None else (None, None, np.empty(0), None)
            out.sketches.extend(folder.fold(cols, rows, scores, count, dead, now_ms, codes))
        return out

    def _by_topic(self, out: BatchOutcome, messages: Sequence[RawMessage], now_ms: int
                  ) -> dict[str, list[RawMessage]]:
        """The batch's records by topic; those whose headers could not be read are dead-lettered here."""
        topics = set(map(_topic_of, messages))
        if len(topics) == 1 and not any(map(_header_error_of, messages)):  # the usual batch: no loop per record
            return {topics.pop(): list(messages)}
        by_topic: dict[str, list[RawMessage]] = {}
        for m in messages:
            if m.header_error is not None:
                f = Failure(0, "decode", "malformed_headers", m.header_error)
                self._deadletter(out, m, f, self._model_of(m.topic), now_ms)
                continue
            by_topic.setdefault(m.topic, []).append(m)
        return by_topic

    def tick(self, now_ms: int) -> list[WindowSketch]:
        """Windows that closed with the clock, without traffic."""
        return [s for served in self.served.values() if served.folder for s in served.folder.tick(now_ms)]

    def _process_model(
        self, out: BatchOutcome, served: ServedModel, msgs: list[RawMessage], now_ms: int
    ) -> tuple[Columns, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        """Score one model's messages; returns the decoded columns, the scored rows and their scores."""
        name = served.model.name
        bodies = [m.value for m in msgs]
        decoded = served.decoder.decode(bodies)
        for f in decoded.failures:
            self._deadletter(out, msgs[f.index], f, name, now_ms)
        checked = served.validator.validate(decoded.columns, longest=max(map(len, filter(None, bodies)), default=0))
        batch_pos = decoded.indices
        for f in checked.failures:
            self._deadletter(out, msgs[int(batch_pos[f.index])], f, name, now_ms)
        rows = checked.rows
        if len(rows) == 0:
            return None
        cols = decoded.columns
        profile = served.validator.profile
        n = len(rows)
        event_ms = (cols.values[profile.time_field][rows] if profile.time_field
                    else np.full(n, now_ms, dtype=np.int64))
        # Latency runs from the request's Kafka record timestamp (when it was produced), not from the payload's
        # event_time: a producer replaying or batching old events would otherwise show minutes of "latency".
        record_ms = np.fromiter(map(_timestamp_of, msgs), dtype=np.int64, count=len(msgs))[batch_pos[rows]]
        dep = served.deployment
        if len(dep.routes_versions()) > 1:
            routes = dep.route(key_buckets(cols.values[profile.key_field][rows], salt=name))
        else:
            routes = [(CHAMPION, dep.champion, np.arange(n))]
        scores = np.full(n, np.nan)
        variant = np.empty(n, dtype=object)
        version = np.empty(n, dtype=object)
        provider = np.empty(n, dtype=object)
        labels = np.empty(n, dtype=object)
        for var, ver, sel in routes:
            model = served.versions[ver]
            batch = model_input(checked, model, None if len(sel) == n else sel)
            started = time.perf_counter()
            try:
                part = model.predict(batch)
            except Exception as exc:  # noqa: BLE001 - these rows are dead-lettered, the worker goes on
                for r in rows[sel].tolist():
                    f = Failure(int(r), "score", "inference_error", f"{type(exc).__name__}: {exc}",
                                type(exc).__name__)
                    self._deadletter(out, msgs[int(batch_pos[r])], f, name, now_ms)
                continue
            inference_s = time.perf_counter() - started
            scores[sel], variant[sel], version[sel] = part, var, ver
            provider[sel] = model.active_provider or "none"
            labels[sel] = model.labels(part)
            ok = np.isfinite(part)  # non-finite scores are dead-lettered below, not counted as predictions
            stamped = ok & (record_ms[sel] > 0)
            out.stats.append(ModelStats(name, ver, var, model.active_provider or "none", int(ok.sum()), inference_s,
                                        ((now_ms - record_ms[sel]) / 1000.0)[stamped], part[ok],
                                        np.clip((now_ms - event_ms[sel]) / 1000.0, 0.0, MAX_LAG_S)[ok]))
        finite = np.isfinite(scores)
        if not finite.all():
            for j in np.flatnonzero(~finite & (variant != None)).tolist():  # noqa: E711 - elementwise
                r = int(rows[j])
                f = Failure(r, "score", "non_finite_score", f"model returned {scores[j]!r}")
                self._deadletter(out, msgs[int(batch_pos[r])], f, name, now_ms)
            rows, scores, event_ms = rows[finite], scores[finite], event_ms[finite]
            variant, version, provider, labels = variant[finite], version[finite], provider[finite], labels[finite]
            if len(rows) == 0:
                return None
        ids = cols.values[profile.id_field][rows]
        common = {
            "request_id": ids,
            "entity_key": self._entity_keys(name, cols.values[profile.key_field][rows]),
            "model": name,
            "schema_id": decoded.schema_ids[rows],
            "event_time": event_ms,
            "scored_at": now_ms,
        }
        values = self._encoder.encode(len(rows), {
            **common, "model_version": version, "variant": variant, "score": scores, "label": labels,
            "provider": provider,
        })
        topic = self.predictions_topic
        out.predictions.extend(keyed_records(topic, ids, values))
        kept = None if len(rows) == len(checked.rows) else np.isin(checked.rows, rows)
        features = None
        if self._scored is not None:  # the matrix rows, whatever the model reads: the trainer retrains from them
            features = self._features(checked.raw(checked.matrix if kept is None else checked.matrix[kept], kept))
        segments = None
        if features is not None and served.model.manifest.segments:  # for quality per segment value at the join
            segments = join_values([segment_text(cols.values[f][rows], None if (m := cols.nulls.get(f)) is None
                                                 else m[rows]) for f in served.model.manifest.segments])
        self._emit_scored(out, common, version, variant, scores, labels, features, segments)
        self._shadow(out, served, checked, kept, common, ids, features)
        return cols, rows, scores, checked.codes

    def _features(self, matrix: np.ndarray) -> list[bytes] | None:
        """Each row of the feature matrix as float32 bytes (one numpy view, no per-row work), for {ns}.scored.

        It is the manifest's matrix (numeric columns, encoded categoricals)
        for a model with named inputs too, so the trainer retrains any model
        from its labeled rows (the challenger reads one matrix).

        Imputed values are NaN here: the trainer imputes them as the model
        does, and builds a challenger's reference profile with the real null rates.
        """
        if self._scored is None:
            return None
        m = np.ascontiguousarray(matrix, dtype="<f4")
        return cast(list[bytes], m.view(np.dtype((np.void, m.shape[1] * 4))).ravel().tolist())

    def _entity_keys(self, model: str, keys: np.ndarray) -> np.ndarray:
        """The entity keys predictions carry: as they came, or their pseudonyms where the key is personal (one
        HMAC per row, only for such models)."""
        if model not in self._pseudonymised:
            return keys
        return np.array([pseudonym(self._pii_key, k) for k in keys.tolist()], dtype=object)

    def _emit_scored(self, out: BatchOutcome, common: dict[str, object], version: object, variant: object,
                     scores: np.ndarray, labels: object, features: list[bytes] | None,
                     segments: np.ndarray | None = None) -> None:
        if self._scored is None or features is None:
            return
        encoder, topic = self._scored
        ids = common["request_id"]
        assert isinstance(ids, np.ndarray)  # noqa: S101 - set by _process_model
        event_time = common["event_time"]
        if self._scored_fraction < 1.0:
            keep = np.flatnonzero(picked(ids.tolist(), self._scored_fraction))
            if len(keep) == 0:
                return
            if len(keep) < len(ids):
                def sub(v: Any) -> Any:
                    return v[keep] if isinstance(v, np.ndarray) else v
                ids, version, variant, scores, labels, event_time, segments = (
                    sub(ids), sub(version), sub(variant), sub(scores), sub(labels), sub(event_time), sub(segments))
                features = [features[i] for i in keep.tolist()]
        sealed = common["model"] in self._sealed
        if sealed:
            features = seal_rows(self._pii_key, str(common["model"]), ids.tolist(), features)
        values = encoder.encode(len(ids), {
            "request_id": ids, "model": common["model"], "model_version": version, "variant": variant,
            "score": scores, "predicted": labels, "event_time": event_time, "features": features,
            "sealed": sealed, "segments": segments,
        })
        out.scored.extend(keyed_records(topic, ids, values))

    def _shadow(self, out: BatchOutcome, served: ServedModel, checked: ValidatedBatch, kept: np.ndarray | None,
                common: dict[str, object], ids: np.ndarray, features: list[bytes] | None) -> None:
        """Score the served rows (``kept`` of the valid ones) with every shadow version; outputs go to the shadow
        topic only."""
        for ver in served.deployment.shadows:
            model = served.versions[ver]
            started = time.perf_counter()
            try:
                scores = model.predict(model_input(checked, model, kept))
            except Exception as exc:  # noqa: BLE001 - a shadow's failure must not touch served traffic
                out.shadow_errors.append(f"{model.name} v{ver}: {type(exc).__name__}: {exc}")
                continue
            labels = model.labels(scores)
            values = self._encoder.encode(len(ids), {
                **common, "model_version": ver, "variant": SHADOW, "score": scores, "label": labels,
                "provider": model.active_provider or "none",
            })
            self._emit_scored(out, common, ver, SHADOW, scores, labels, features)
            out.shadow_predictions.extend(keyed_records(self.shadow_topic, ids, values))
            out.stats.append(ModelStats(model.name, ver, SHADOW, model.active_provider or "none", len(ids),
                                        time.perf_counter() - started, np.empty(0), scores))

    def _deadletter(self, out: BatchOutcome, msg: RawMessage, failure: Failure, model: str, now_ms: int) -> None:
        errors = error_headers(msg, failure, model, now_ms)
        key, value = msg.key, msg.value
        personal, key_field = self._personal.get(model, (frozenset(), None))
        if personal:
            key, value, note = self._redacted(msg, personal, key_field)
            errors.append((PII_HEADER, note.encode()))
        key, value, headers = bound_record(key, value, msg.headers, errors, self.dlq_max)
        out.deadletters.append(OutRecord(self.deadletter_topic, key, value, headers))
        out.failures.append((model, failure))

    def _redacted(self, msg: RawMessage, personal: frozenset[str], key_field: str | None
                  ) -> tuple[bytes | None, bytes | None, str]:
        """The dead letter's key and value with personal values pseudonymised, and what the header says."""
        if self.redactor is None:
            return msg.key, msg.value, "kept: deadletter_pii=keep"
        key = msg.key
        if key is not None and key_field in personal:  # the entity key is the personal value itself
            key = pseudonym(self.redactor.key, key).encode()
        got = self.redactor.redact(msg.value, personal)
        if got is None:
            return key, msg.value, "kept: the record does not decode, so it cannot be redacted"
        value, fields = got
        return key, value, f"redacted: {','.join(fields) or 'none present'} (keyed HMAC-SHA256)"
