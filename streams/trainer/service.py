"""``driftline trainer``: retrain requests in, a better model in production out — every stage an event.

For each ``requested`` record on ``{ns}.retrain``:

1. ``training`` — wait until ``trainer_min_labels`` labeled records of the
   champion exist since the request's ``data_start`` (``{ns}.labeled``), then
   fit a challenger on their input rows (same features, same encodings);
2. ``registered`` — the challenger becomes the next version in the registry,
   with its manifest (the champion's meaning, its own hash, metrics on a
   holdout of the labels, the training data's fingerprint) and a reference
   profile built from the same rows;
3. ``shadow`` — it scores every request next to the champion, on the shadow
   topic, and its predictions are joined to labels like the champion's;
4. ``promoted`` or ``rejected`` — once ``trainer_shadow_labels`` requests were
   labeled for both, a paired test on those same requests decides
   (``promote_metric``, ``promote_margin``, ``drift_alpha``): promoted to
   champion, or taken out of shadow, with the numbers in the reason.

The trainer is a plain process (run it where training is cheap: the spot
Job in ``deploy/k8s``); its state is the retrain topic itself, so a restarted
trainer skips requests that already reached a final stage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from driftline.detectors.compare import best_threshold, compare, guardrails
from driftline.inference.deployment import Deployment
from driftline.inference.errors import ModelError
from driftline.inference.manifest import Manifest
from driftline.inference.registry import ModelRegistry, register_version
from driftline.inference.training import train_challenger
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.events import RetrainEvent, Stage, encode_event, read_retrain
from driftline.streams.core.poison import DETAIL_CHARS, BadRecord, Skip, SkipLog, decode_avro
from driftline.streams.core.sealing import Opener, SealError
from driftline.streams.errors import BrokerError, ConfigError
from driftline.streams.kafka.control import current_deployment, write_deployment
from driftline.streams.kafka.topics import iter_topic, reader_config
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)
FINAL = ("promoted", "rejected", "failed")


@dataclass(frozen=True, slots=True)
class LabeledRow:
    request_id: str
    version: str
    variant: str
    score: float
    truth: float  # 1/0 for classifiers, the target for regressors
    label_time: int
    features: bytes


@dataclass(frozen=True, slots=True)
class LabeledRecord:
    """A parsed ``driftline.Labeled`` record, kept as read: the truth depends on the model's positive label."""

    model: str
    request_id: str
    version: str
    variant: str
    score: float
    label: str | None
    target: float | None
    label_time: int
    features: bytes

    def row(self, positive: str) -> LabeledRow:
        truth = self.target if self.target is not None else float(self.label == positive)
        return LabeledRow(self.request_id, self.version, self.variant, self.score, truth, self.label_time,
                          self.features)


class LabeledReader:
    """``{ns}.labeled`` read once, then read on from where it was: one consumer for the trainer's life.

    The trainer asks for labels every couple of seconds while it waits for
    enough of them; re-reading the topic from offset 0 each time was work
    that grew with the topic. Records are kept in memory, the oldest dropped
    past ``max_records``.
    """

    def __init__(self, consumer: Any, topic: str, catalog: SchemaCatalog, skips: SkipLog,
                 max_records: int = 2_000_000, opener: Opener | None = None) -> None:
        """``opener``: opens rows sealed because the model reads personal fields (from the PII key)."""
        self._consumer, self.topic, self.catalog, self.skips = consumer, topic, catalog, skips
        self.opener = opener
        self.sealed_skipped = 0  # sealed rows that did not open (no PII key, or another one)
        self.records: deque[LabeledRecord] = deque(maxlen=max_records)
        self._assigned = False
        self._partitions: set[int] = set()
        self._at_end: set[int] = set()

    def read_new(self, timeout_s: float = 30.0) -> int:
        """Read what arrived since the last call, up to each partition's end; returns how many records came.

        librdkafka reports a partition's end (EOF) once each time it gets
        there, so which partitions are at their end is remembered between
        calls; a record on one moves it back, and the next call waits for
        its next EOF. A call waits only for the partitions not at their end
        when it starts, so steady traffic cannot keep it from returning.
        """
        if not self._assigned:
            info = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if info is None or info.error is not None:
                raise BrokerError(f"topic {self.topic} does not exist; run driftline topics create")
            self._consumer.assign([TopicPartition(self.topic, p, 0) for p in info.partitions])
            self._partitions = set(info.partitions)
            self._assigned = True
        before = len(self.records)
        deadline = time.monotonic() + timeout_s
        pending = self._partitions - self._at_end  # fixed for this call, so steady traffic cannot keep it open
        polled = False
        while not polled or pending:
            if time.monotonic() > deadline:  # labels arrive faster than a slow broker serves them: read on next call
                log.info("reading %s: %d partitions not at their end after %.0fs; going on with what came",
                         self.topic, len(pending), timeout_s)
                break
            polled = True
            for m in self._consumer.consume(10_000, timeout=0.1):
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise BrokerError(f"reading {self.topic}: {err}")
                    self._at_end.add(m.partition())
                    pending.discard(m.partition())
                    continue
                self._at_end.discard(m.partition())  # past its end: the next call waits for its next EOF
                r = decode_labeled(self.catalog, m.value(), self.opener)
                if isinstance(r, Skip) and r.reason == "sealed_labeled":
                    self.sealed_skipped += 1
                if isinstance(r, Skip):
                    self.skips.skip(self.topic, m.partition(), m.offset(), m.key(), r)
                else:
                    self.records.append(r)
        return len(self.records) - before

    def rows(self, model: str, since_ms: int, positive: str) -> list[LabeledRow]:
        return [r.row(positive) for r in self.records if r.model == model and r.label_time >= since_ms]

    def close(self) -> None:
        self._consumer.close()


class Trainer:
    def __init__(self, settings: Settings, catalog: SchemaCatalog, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, reader: LabeledReader | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.sleep = sleep
        self.registry = ModelRegistry(settings.model_dir)
        self.conf = settings.confluent(**{"log_level": 0})
        self.producer = Producer({**self.conf, "linger.ms": 5})
        self.retrain_schema = catalog.latest("driftline.RetrainRequest")
        self.skips = SkipLog(log)
        self.reader = reader or LabeledReader(
            Consumer(reader_config(self.conf, f"{settings.namespace}-trainer-reader")),
            settings.topic("labeled"), catalog, self.skips, opener=opener_for(settings))

    # -- events ---------------------------------------------------------------------------------

    def emit(self, request: RetrainEvent, stage: Stage, reason: str, candidate: str | None = None) -> None:
        event = request.advance(stage, reason, int(self.clock() * 1000), candidate)
        log.info("retrain %s %s: %s", event.model, stage, reason,
                 extra={"event": "retrain", "model": event.model, "version": candidate or event.model_version,
                        "stage": stage, "request": event.id})
        self.producer.produce(self.settings.topic("retrain"), encode_event(self.retrain_schema, event),
                              event.model.encode())
        if self.producer.flush(15) != 0:
            raise BrokerError("could not write a retrain event")

    def write_deployment(self, dep: Deployment, reason: str) -> None:
        actor = self.settings.control_identity or f"driftline-trainer ({self.settings.actor()})"
        write_deployment(self.producer, self.settings, dep, reason=reason, actor=actor)
        log.info("deployment written: %s", dep.describe(), extra={"event": "deployment_written", "model": dep.model,
                                                                   "version": dep.champion, "actor": actor,
                                                                   "reason": reason})

    def deployment(self, model: str, fallback: Deployment | None = None) -> Deployment:
        """The control topic's record; without one, ``fallback`` or the configured version.

        The fallback is read before a challenger is registered: with a
        configured version of ``latest``, the new version would otherwise look
        like the champion.
        """
        return current_deployment(self.settings, model, fallback)

    # -- labeled data -----------------------------------------------------------------------------

    def labeled(self, model: str, since_ms: int, positive: str) -> list[LabeledRow]:
        """The model's labeled rows since ``since_ms``, with what arrived since the last call read first."""
        self.reader.read_new()
        return self.reader.rows(model, since_ms, positive)

    def wait_for(self, what: str, ready: Callable[[], Any], timeout_s: float) -> Any:
        deadline = self.clock() + timeout_s
        while True:
            got = ready()
            if got:
                return got
            if self.clock() > deadline:
                return None
            log.info("waiting for %s", what)
            self.sleep(2.0)

    # -- one request ------------------------------------------------------------------------------

    def handle(self, request: RetrainEvent) -> str:
        """Take one retrain request through its stages; returns the final stage."""
        s = self.settings
        model = request.model
        dep = self.deployment(model)
        if request.model_version != dep.champion:  # asked for before a promotion: the version it names is gone
            self.emit(request, "rejected", f"superseded: v{request.model_version} is no longer the champion "
                      f"(v{dep.champion} is); v{dep.champion}'s own alerts ask for a retrain when it needs one")
            return "rejected"
        champion = Manifest.read(self.registry.path(model, dep.champion))
        positive = champion.labels[1]
        since = request.data_start
        self.emit(request, "training", f"waiting for {s.trainer_min_labels} labels of v{dep.champion} since "
                  f"{datetime.fromtimestamp(since / 1000, tz=UTC):%H:%M:%S}")

        width = 4 * champion.profile.width  # float32 features: rows of another width were not this model's input

        def training_rows() -> list[LabeledRow] | None:
            rows = [r for r in self.labeled(model, since, positive) if r.version == dep.champion
                    and r.variant != "shadow" and len(r.features) == width]
            return rows if len(rows) >= s.trainer_min_labels else None

        rows = self.wait_for("training labels", training_rows, s.trainer_wait_s)
        if rows is None:
            sealed = getattr(self.reader, "sealed_skipped", 0)
            why = (f"; {sealed} labeled rows are sealed and did not open: give the trainer the workers' PII key "
                   "(DRIFTLINE_PII_KEY or DRIFTLINE_PII_KEY_FILE)" if sealed else "")
            self.emit(request, "failed",
                      f"fewer than {s.trainer_min_labels} labels within {s.trainer_wait_s:g}s{why}")
            return "failed"
        from driftline.streams.core.profiling import impute

        raw = np.frombuffer(b"".join(r.features for r in rows), dtype="<f4").reshape(len(rows), -1)
        x = impute(raw, champion.profile)  # NaN where a request had no value: the model saw the impute value
        y = np.array([r.truth for r in rows])
        cut = int(0.8 * len(rows))
        try:
            onnx_bytes, section = train_challenger(x[:cut], y[:cut], champion.task)
        except ModelError as exc:
            self.emit(request, "failed", str(exc))
            return "failed"
        version = self.next_version(model)
        holdout = self.holdout(onnx_bytes, section, champion, x[cut:], y[cut:], np.array([r.score for r in rows[cut:]]))
        template = {**dict(champion.raw), "onnx": section}
        if champion.task != "regression":  # its own threshold: a calibrated model of rare positives seldom reaches 0.5
            goal = "cost" if "cost" in s.promote_guardrails else "f1"
            template["threshold"] = best_threshold(y[:cut], scores_of(onnx_bytes, section, x[:cut]), metric=goal,
                                                   cost_fp=s.cost_false_positive, cost_fn=s.cost_false_negative)
        fingerprint = {"source": self.settings.topic("labeled"), "rows": len(rows),
                       "from": min(r.label_time for r in rows), "to": max(r.label_time for r in rows),
                       "sha256": hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()}

        def finish(staging: Path) -> None:
            from driftline.inference.model import OnnxModel
            from driftline.streams.core.profiling import profile_from_matrix

            m = OnnxModel(staging, providers="cpu")
            m.load()
            profile_from_matrix(staging, raw, m.predict(x))  # the requests' nulls, not the imputed values
            if self.settings.model_sign_key_file is not None:  # workers that check signatures load it then
                from driftline.inference.signing import sign_version

                sign_version(staging, Path(self.settings.model_sign_key_file).read_bytes())

        onnx_file = Path(self.settings.data_dir) / f"challenger-{model}-{version}.onnx"
        onnx_file.parent.mkdir(parents=True, exist_ok=True)
        onnx_file.write_bytes(onnx_bytes)
        from driftline.streams.core.provenance import code_version

        register_version(self.settings.model_dir, onnx_file, template, name=model, version=version,
                         created_at=datetime.fromtimestamp(self.clock(), tz=UTC), code_version=code_version(),
                         metrics=holdout,
                         training_data=fingerprint, finish=finish)
        onnx_file.unlink()
        self.emit(request, "registered", f"trained on {len(rows)} labels; holdout {_fmt(holdout)}", version)
        shadow_from = int(self.clock() * 1000)
        self.write_deployment(self.deployment(model, dep).add_shadow(version, shadow_from),
                              f"retrain {request.id}: challenger v{version} in shadow")
        self.emit(request, "shadow", f"v{version} scores every request next to v{dep.champion}", version)

        def pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
            got = self.labeled(model, shadow_from, positive)
            champ = {r.request_id: r for r in got if r.version == dep.champion and r.variant != "shadow"}
            chal = {r.request_id: r for r in got if r.version == version and r.variant == "shadow"}
            both = sorted(champ.keys() & chal.keys())
            if len(both) < s.trainer_shadow_labels:
                return None
            return (np.array([champ[k].truth for k in both]), np.array([champ[k].score for k in both]),
                    np.array([chal[k].score for k in both]))

        paired = self.wait_for("shadow labels", pairs, s.trainer_shadow_wait_s)
        current = self.deployment(model, dep)
        if paired is None:
            self.write_deployment(current.remove_shadow(version, int(self.clock() * 1000)),
                                  f"retrain {request.id}: too few shadow labels for v{version}")
            self.emit(request, "rejected", f"fewer than {s.trainer_shadow_labels} labeled shadow requests within "
                      f"{s.trainer_shadow_wait_s:g}s", version)
            return "rejected"
        better, detail = decide(paired, s, champion, dep.champion, version,
                                challenger_threshold=float(template.get("threshold", champion.threshold)))
        if better:
            self.write_deployment(current.promote(version, int(self.clock() * 1000)),
                                  f"retrain {request.id}: v{version} promoted: {detail}"[:500])
            self.emit(request, "promoted", detail, version)
            return "promoted"
        self.write_deployment(current.remove_shadow(version, int(self.clock() * 1000)),
                              f"retrain {request.id}: v{version} rejected: {detail}"[:500])
        self.emit(request, "rejected", detail, version)
        return "rejected"

    def next_version(self, model: str) -> str:
        numbers = [int(v) for v in self.registry.versions(model) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def holdout(self, onnx_bytes: bytes, section: dict[str, Any], champion: Manifest, x: np.ndarray, y: np.ndarray,
                champion_scores: np.ndarray) -> dict[str, float]:
        scores = scores_of(onnx_bytes, section, x)
        if champion.task == "regression":
            return {"holdout_rmse": float(np.sqrt(np.mean((scores - y) ** 2))),
                    "champion_holdout_rmse": float(np.sqrt(np.mean((champion_scores - y) ** 2)))}
        from driftline.detectors.compare import log_losses

        return {"holdout_log_loss": float(log_losses(y, scores).mean()),
                "champion_holdout_log_loss": float(log_losses(y, champion_scores).mean()),
                "holdout_rows": float(len(y))}


def scores_of(onnx_bytes: bytes, section: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """A trained model's scores for the rows ``x`` (ONNX Runtime on the CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = np.asarray(session.run([section["output"]], {section["input"]: x.astype(np.float32)})[0])
    return out[:, section.get("output_index", 0)] if out.ndim == 2 else out


def decide(paired: tuple[np.ndarray, np.ndarray, np.ndarray], s: Settings, champion: Manifest, champion_version: str,
           version: str, *, challenger_threshold: float | None = None) -> tuple[bool, str]:
    """Promote the challenger? (labels, champion scores, challenger scores) of the same shadow requests.

    It must win on ``promote_metric`` (significant, by ``promote_margin``) and,
    for a classifier, keep every ``promote_guardrails`` metric, each version
    deciding at its own threshold.
    """
    verdict = compare(*paired, metric=s.promote_metric, threshold=champion.threshold, margin=s.promote_margin,
                      alpha=s.drift_alpha)
    detail = (f"{verdict['metric']} v{champion_version} {verdict['champion']:.4f} vs v{version} "
              f"{verdict['challenger']:.4f} on {verdict['n']} shadow requests (p={verdict['p_value']:.2g})")
    if not verdict["better"]:
        return False, f"not better by {s.promote_margin:g} at alpha {s.drift_alpha:g}: {detail}"
    if champion.task == "regression" or not s.promote_guardrails:
        return True, detail
    checks = guardrails(*paired, s.promote_guardrails, threshold=champion.threshold,
                        tolerance=s.promote_guardrail_tolerance, cost_fp=s.cost_false_positive,
                        cost_fn=s.cost_false_negative, challenger_threshold=challenger_threshold)
    lost = [c for c in checks if not c.held]
    kept = ", ".join(str(c) for c in checks)
    if lost:
        cut = champion.threshold if challenger_threshold is None else challenger_threshold
        return False, (f"better on {detail}, but loses {', '.join(c.metric for c in lost)} (v{champion_version} at "
                       f"{champion.threshold:g} vs v{version} at {cut:g}: {kept}; tolerance "
                       f"{s.promote_guardrail_tolerance:g})")
    return True, f"{detail}; guardrails kept ({kept})"


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


_MAX_MS = 253_402_300_799_999  # 9999-12-31: later epoch ms are no date at all
RETRAIN_TEXT = ("id", "model", "model_version", "stage", "reason")


def parse_retrain(catalog: SchemaCatalog, value: bytes | None) -> RetrainEvent | Skip:
    """A retrain event from ``{ns}.retrain``, or why not; never raises.

    Beyond the schema, its names must be set and its times dates: the
    trainer prints them and computes with them, and a record it cannot
    handle would be handled again after every restart.
    """
    event = read_retrain(catalog, value)
    if isinstance(event, Skip):
        return event
    for name in RETRAIN_TEXT:
        if not getattr(event, name):
            return Skip("invalid_retrain", f"{name} must be a non-empty string")
    for name in ("data_start", "data_end", "requested_at"):
        if not 0 <= getattr(event, name) <= _MAX_MS:
            return Skip("invalid_retrain", f"{name} must be epoch milliseconds, got {str(getattr(event, name))[:40]}")
    return event


@dataclass(frozen=True, slots=True)
class Labeled:
    """One record of ``{ns}.labeled``: whose it is, and the row the trainer uses."""

    model: str
    label_time: int
    row: LabeledRow


def decode_labeled(catalog: SchemaCatalog, value: bytes | None, opener: Opener | None = None) -> LabeledRecord | Skip:
    """A ``driftline.Labeled`` record, or why it is not one; a sealed row is opened with ``opener`` (the PII key)."""
    try:
        r = decode_avro(catalog, value, ("driftline.Labeled",))
    except BadRecord as exc:
        return exc.skip()
    features = r.get("features")
    if isinstance(features, bytes) and r.get("sealed"):
        if opener is None:
            return Skip("sealed_labeled", "the row is sealed (the model reads personal fields): give the trainer "
                        "the workers' PII key (DRIFTLINE_PII_KEY or DRIFTLINE_PII_KEY_FILE)")
        try:
            features = opener.open(str(r.get("model")), str(r.get("request_id")), features)
        except SealError as exc:
            return Skip("sealed_labeled", str(exc))
    if not isinstance(features, bytes) or len(features) % 4:
        return Skip("invalid_labeled", "features must be float32 bytes")
    try:
        target = r.get("target")
        label = r.get("label")
        return LabeledRecord(str(r["model"]), str(r["request_id"]), str(r["model_version"]), str(r["variant"]),
                             float(r["score"]), None if label is None else str(label),
                             None if target is None else float(target), int(r["label_time"]), features)
    except (KeyError, TypeError, ValueError) as exc:
        return Skip("invalid_labeled", f"{type(exc).__name__}: {exc}")


def parse_labeled(catalog: SchemaCatalog, value: bytes | None, positive: str,
                  opener: Opener | None = None) -> Labeled | Skip:
    """A ``driftline.Labeled`` record as a training row (``positive``: the label that means 1), or why not."""
    r = decode_labeled(catalog, value, opener)
    if isinstance(r, Skip):
        return r
    return Labeled(r.model, r.label_time, r.row(positive))


def opener_for(settings: Settings) -> Opener | None:
    """What opens sealed rows: the PII key the workers seal them with, or None without one."""
    key = settings.pii_secret()
    return None if key is None else Opener(key)


def run_trainer(settings: Settings, catalog: SchemaCatalog, *, once: bool = False) -> int:
    """Follow ``{ns}.retrain``; handle each request that has not reached a final stage. ``once``: stop when idle."""
    trainer = Trainer(settings, catalog)
    topic = settings.topic("retrain")
    consumer = Consumer(reader_config(trainer.conf, f"{settings.namespace}-trainer"))
    assigned: set[int] = set()
    at_end: set[int] = set()  # assigned partitions read to their end (``once`` stops only then)
    consumer.subscribe([topic], on_assign=lambda _c, tps: assigned.update(tp.partition for tp in tps))
    final: set[str] = set()
    for m in iter_topic(trainer.conf, topic):  # what earlier runs finished (the topic is the trainer's state)
        rec = parse_retrain(catalog, m.value())
        if isinstance(rec, Skip):
            trainer.skips.skip(topic, m.partition(), m.offset(), m.key(), rec)
        elif rec.stage in FINAL:
            final.add(rec.id)
    pending: dict[str, RetrainEvent] = {}
    idle_since = time.monotonic()
    try:
        while True:
            for msg in consumer.consume(100, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                    else:
                        log.warning("retrain topic: %s", err)
                    continue
                at_end.discard(msg.partition() or 0)
                rec = parse_retrain(catalog, msg.value())
                if isinstance(rec, Skip):
                    trainer.skips.skip(topic, msg.partition(), msg.offset(), msg.key(), rec)
                    continue
                if rec.stage in FINAL:
                    final.add(rec.id)
                    pending.pop(rec.id, None)
                elif rec.stage == "requested" and rec.id not in final:
                    pending[rec.id] = rec
            if pending:
                rid, rec = next(iter(pending.items()))
                del pending[rid]
                try:
                    trainer.handle(rec)
                except (ModelError, ConfigError) as exc:
                    trainer.emit(rec, "failed", str(exc))
                except BrokerError:
                    raise  # the broker's fault, not the request's: a restart retries it
                except Exception as exc:  # noqa: BLE001 - a request that breaks the trainer must fail, not crash-loop it
                    log.exception("retrain %s failed", rid)
                    trainer.emit(rec, "failed", f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS])
                final.add(rid)
                idle_since = time.monotonic()
            elif once and time.monotonic() - idle_since > (5 if assigned and at_end >= assigned else 60):
                return 0  # idle: read to the end and nothing left (or never assigned a partition in a minute)
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()
        trainer.reader.close()
