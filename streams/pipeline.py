"""The score path for one batch, as a pure function of the messages and the clock.

Kafka stays outside: the worker hands in :class:`RawMessage` objects and gets
back the records to produce (predictions and dead letters). One decode pass,
one validation pass, one ONNX call per model, one encode pass per batch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from detectors.sketch import WindowSketch
from inference.model import OnnxModel
from schemas.catalog import SchemaCatalog, WireSchema
from schemas.codec import BatchDecoder, BatchEncoder, Failure
from schemas.columnar import Columns
from schemas.profile import CategoricalFeature
from schemas.validation import Validator
from streams.windows import WindowFolder

Headers = list[tuple[str, bytes]]
ERROR_HEADER = "driftline.errors."


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed Kafka record, as the pipeline sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class ModelStats:
    """What one model did with its share of a batch, for metrics."""

    model: str
    version: str
    variant: str
    provider: str
    scored: int
    inference_s: float
    latency_s: np.ndarray


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    predictions: list[OutRecord] = field(default_factory=list)
    deadletters: list[OutRecord] = field(default_factory=list)
    failures: list[tuple[str, Failure]] = field(default_factory=list)
    stats: list[ModelStats] = field(default_factory=list)
    sketches: list[WindowSketch] = field(default_factory=list)


class ServedModel:
    """A loaded model with the decoder and validator for its requests topic."""

    def __init__(
        self, model: OnnxModel, catalog: SchemaCatalog, *, max_message_bytes: int, variant: str = "champion",
        folder: WindowFolder | None = None,
    ) -> None:
        if not model.ready:
            raise ValueError("load() the model before serving it")
        self.model = model
        self.variant = variant
        self.folder = folder
        self.reader: WireSchema = catalog.latest(model.manifest.request_subject)
        self.decoder = BatchDecoder(catalog, self.reader, max_message_bytes)
        self.validator = Validator(model.manifest.profile, self.reader)
        if folder is not None:
            folder.accept_codes({f.name: f.categories for f in model.manifest.profile.features
                                 if isinstance(f, CategoricalFeature)})


def deadletter_headers(msg: RawMessage, failure: Failure, model: str, now_ms: int) -> Headers:
    """The original headers plus Kafka-Connect-style error headers (string values)."""
    when = datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    added = {
        "topic": msg.topic,
        "partition": str(msg.partition),
        "offset": str(msg.offset),
        "stage": failure.stage,
        "reason": failure.reason,
        "class.name": failure.error_class,
        "exception.message": failure.message,
        "model": model,
        "timestamp": when,
    }
    return list(msg.headers or []) + [(ERROR_HEADER + k, v.encode()) for k, v in added.items()]


class ScorePipeline:
    """Turns batches of request messages into prediction and dead-letter records."""

    def __init__(
        self,
        served: Mapping[str, ServedModel],
        prediction_schema: WireSchema,
        *,
        predictions_topic: str,
        deadletter_topic: str,
        deadletter_max_value_bytes: int,
    ) -> None:
        self.served = dict(served)
        self.prediction_schema = prediction_schema
        self._encoder = BatchEncoder(prediction_schema)
        self.predictions_topic = predictions_topic
        self.deadletter_topic = deadletter_topic
        self.dlq_max = deadletter_max_value_bytes

    def process(self, messages: Sequence[RawMessage], now_ms: int) -> BatchOutcome:
        out = BatchOutcome()
        by_topic: dict[str, list[RawMessage]] = {}
        for m in messages:
            by_topic.setdefault(m.topic, []).append(m)
        for topic, msgs in by_topic.items():
            served = self.served.get(topic)
            if served is None:
                for i, m in enumerate(msgs):
                    f = Failure(i, "decode", "unrouted_topic", f"no model serves topic {topic}")
                    self._deadletter(out, m, f, "-", now_ms)
                continue
            before = len(out.failures)
            valid = self._process_model(out, served, msgs, now_ms)
            if served.folder is not None:
                cols, rows, scores, codes = valid if valid is not None else (None, None, np.empty(0), None)
                out.sketches.extend(
                    served.folder.fold(cols, rows, scores, len(msgs), len(out.failures) - before, now_ms, codes)
                )
        return out

    def tick(self, now_ms: int) -> list[WindowSketch]:
        """Windows that closed with the clock, without traffic."""
        return [s for served in self.served.values() if served.folder for s in served.folder.tick(now_ms)]

    def _process_model(
        self, out: BatchOutcome, served: ServedModel, msgs: list[RawMessage], now_ms: int
    ) -> tuple[Columns, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        """Score one model's messages; returns the decoded columns, the scored rows and their scores."""
        model = served.model
        name = model.name
        decoded = served.decoder.decode([m.value for m in msgs])
        for f in decoded.failures:
            self._deadletter(out, msgs[f.index], f, name, now_ms)
        checked = served.validator.validate(decoded.columns)
        batch_pos = decoded.indices
        for f in checked.failures:
            self._deadletter(out, msgs[int(batch_pos[f.index])], f, name, now_ms)
        rows = checked.rows
        if len(rows) == 0:
            return None
        started = time.perf_counter()
        try:
            scores = model.predict(checked.matrix)
        except Exception as exc:  # noqa: BLE001 - the batch is dead-lettered, the worker goes on
            for r in rows.tolist():
                f = Failure(int(r), "score", "inference_error", f"{type(exc).__name__}: {exc}",
                            type(exc).__name__)
                self._deadletter(out, msgs[int(batch_pos[r])], f, name, now_ms)
            return None
        inference_s = time.perf_counter() - started
        finite = np.isfinite(scores)
        if not finite.all():
            for j in np.flatnonzero(~finite).tolist():
                r = int(rows[j])
                f = Failure(r, "score", "non_finite_score", f"model returned {scores[j]!r}")
                self._deadletter(out, msgs[int(batch_pos[r])], f, name, now_ms)
            rows, scores = rows[finite], scores[finite]
        cols = decoded.columns
        profile = model.manifest.profile
        ids = cols.values[profile.id_field][rows]
        n = len(rows)
        event_ms = (cols.values[profile.time_field][rows] if profile.time_field
                    else np.full(n, now_ms, dtype=np.int64))
        labels = model.labels(scores)
        values = self._encoder.encode(n, {
            "request_id": ids,
            "entity_key": cols.values[profile.key_field][rows],
            "model": model.name,
            "model_version": model.version,
            "variant": served.variant,
            "score": scores,
            "label": labels,
            "schema_id": decoded.schema_ids[rows],
            "provider": model.active_provider or "none",
            "event_time": event_ms,
            "scored_at": now_ms,
        })
        topic = self.predictions_topic
        out.predictions.extend(
            OutRecord(topic, rid.encode(), v, None) for rid, v in zip(ids.tolist(), values, strict=True)
        )
        out.stats.append(
            ModelStats(name, model.version, served.variant, model.active_provider or "none", n, inference_s,
                       (now_ms - event_ms) / 1000.0)
        )
        return cols, rows, scores, checked.codes

    def _deadletter(self, out: BatchOutcome, msg: RawMessage, failure: Failure, model: str, now_ms: int) -> None:
        headers = deadletter_headers(msg, failure, model, now_ms)
        value = msg.value
        if value is not None and len(value) > self.dlq_max:
            headers += [
                (ERROR_HEADER + "value.truncated", b"true"),
                (ERROR_HEADER + "value.size", str(len(value)).encode()),
                (ERROR_HEADER + "value.sha256", hashlib.sha256(value).hexdigest().encode()),
            ]
            value = value[: self.dlq_max]
        out.deadletters.append(OutRecord(self.deadletter_topic, msg.key, value, headers))
        out.failures.append((model, failure))
