"""``driftline up``: a broker (embedded, or a local Apache Kafka), a worker, example traffic and a live summary.

The worker runs as its own process, as in production; this process drives
traffic, watches the output topics and, at the end, counts every topic by
reading it (the embedded broker's latest-offset answer is wrong). A record
on a watched topic that does not parse is skipped, logged once with its
position and counted on the screen.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from driftline.detectors.fairness import OTHER, SegmentCounts, disparities, group_rates
from driftline.inference.deployment import Deployment
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode_many
from driftline.streams.catalog import build_catalog
from driftline.streams.cli.common import use_colour
from driftline.streams.core.drift import sketch_from_dict
from driftline.streams.core.events import ALERT_SUBJECT, RETRAIN_SUBJECT, Event, format_event, read_alert, read_retrain
from driftline.streams.core.pipeline import Headers
from driftline.streams.core.poison import BadRecord, Skip, SkipLog, decode_avro, load_json
from driftline.streams.core.quality import is_label_batch
from driftline.streams.errors import ConfigError
from driftline.streams.example import fraud_generator
from driftline.streams.kafka.broker import BrokerKind, launch
from driftline.streams.kafka.clients import read_headers
from driftline.streams.kafka.control import write_deployment
from driftline.streams.kafka.topics import count_records, ensure_topics
from driftline.streams.registry import request_writer
from driftline.streams.settings import Settings

BAD_EVERY = 97  # one malformed request in about a hundred, so dead letters show
MAX_REASON = 60  # a dead-letter reason header is cut here: the topic is shared, the screen is not

log = logging.getLogger(__name__)


@dataclass
class Watch:
    """What the monitor has seen so far (written by one thread, read by the screen)."""

    produced: int = 0
    predictions: int = 0
    deadletters: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    first_prediction_s: float | None = None
    rate_window: list[tuple[float, int]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    alerts: int = 0
    retrains: int = 0
    skipped: int = 0  # records of the watched topics that do not parse
    #: requests and positive decisions per segment value since the start (the window sketches' segments)
    segments: dict[str, SegmentCounts] = field(default_factory=dict)
    explained: int = 0
    #: the last explanation: request id and its largest attributions, largest first
    last_explanation: tuple[str, list[tuple[str, float]]] | None = None

    def add_explanation(self, rec: dict[str, Any]) -> bool:
        """Count a record of ``{ns}.explanations`` and keep its three largest attributions; False if unusable."""
        names, phi = rec.get("features"), rec.get("attributions")
        if not isinstance(names, list) or not isinstance(phi, list) or len(names) != len(phi) or not names:
            return False
        top = sorted(zip(names, phi, strict=True), key=lambda kv: -abs(float(kv[1])))[:3]
        self.explained += 1
        self.last_explanation = (_shown(rec.get("request_id")), [(_shown(n), float(v)) for n, v in top])
        return True

    def add_sketch(self, value: bytes | None) -> bool:
        """Fold a record of ``{ns}.sketches`` into :attr:`segments`; False when it is not a window sketch."""
        try:
            data = load_json(value)
            if is_label_batch(data):
                return True
            sketch = sketch_from_dict(data)
        except BadRecord:
            return False
        for name, counts in sketch.segments.items():
            have = self.segments.get(name)
            self.segments[name] = counts if have is None else have + counts
        return True

    def rate(self) -> float:
        if len(self.rate_window) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate_window[0], self.rate_window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _shown(value: Any, limit: int = 40) -> str:
    """A value of a topic's record as the screen may print it: printable, short."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def _bad_value(i: int, good: bytes, rng: np.random.Generator) -> bytes:
    kind = i % 3
    if kind == 0:
        return rng.bytes(40)
    if kind == 1:
        return b"\x01" + good[1:]
    return good[:-7]


LABEL_DELAY_S = 1.0  # outcomes become known a second after the request (a chargeback takes days)
DEMO_EXPLAIN_FRACTION = 0.01  # `driftline up` explains 20 of its 2,000 requests a second: ~7 % of a core


def drive(settings: Settings, catalog: SchemaCatalog, rate: float, duration: float,
          drift_at: float | None, watch: Watch, stop: threading.Event) -> None:
    """Produce example requests at ``rate``/s, and their labels a second later; drift from ``drift_at`` s.

    The drift moves two features, brings in an unknown category and changes
    the fraud rule, so the labels show concept drift too.
    """
    gen = fraud_generator()
    topic = settings.requests_topic(settings.models[0])
    schema = request_writer(catalog, settings, "driftline.examples.CardTransaction", topic)
    feedback = catalog.latest("driftline.Feedback")
    pending: deque[tuple[float, list[str], np.ndarray]] = deque()
    producer = Producer(settings.producer_config())
    rng = np.random.default_rng()
    drift = gen.Drift(shift={"amount": 1.0, "distance_from_last_km": 1.5},
                      new_category=("crypto_exchange", 0.05), label_rule=2)
    start = time.monotonic()
    tick = 0.1
    sent = 0
    while not stop.is_set():
        elapsed = time.monotonic() - start
        if elapsed >= duration:
            break
        due = int(rate * elapsed) - sent
        if due > 0:
            drifting = drift_at is not None and elapsed >= drift_at
            now_ms = int(time.time() * 1000)
            records, labels = gen.generate(due, rng, start_ms=now_ms, step_ms=0,
                                           drift=drift if drifting else gen.NO_DRIFT)
            values = encode_many(schema, records)
            for j, (rec, value) in enumerate(zip(records, values, strict=True)):
                if (sent + j) % BAD_EVERY == BAD_EVERY - 1:
                    value = _bad_value(sent + j, value, rng)
                producer.produce(topic, value, rec["card_id"].encode())
            pending.append((time.monotonic() + LABEL_DELAY_S, [r["request_id"] for r in records], labels))
            while pending and pending[0][0] <= time.monotonic():
                _, ids, ys = pending.popleft()
                outcomes = [{"request_id": rid, "label": "fraud" if y else "legit", "target": None,
                             "event_time": int(time.time() * 1000)} for rid, y in zip(ids, ys.tolist(), strict=True)]
                for rid, value in zip(ids, encode_many(feedback, outcomes), strict=True):
                    producer.produce(settings.topic("feedback"), value, rid.encode())
            producer.poll(0)
            sent += due
            watch.produced = sent
        stop.wait(tick)
    producer.flush(30)


def read_watched(catalog: SchemaCatalog, value: bytes | None, subject: str) -> dict[str, Any] | Event | Skip:
    """A record of one watched topic as ``subject`` (times as epoch ms), or why not; never raises."""
    if subject == ALERT_SUBJECT:
        return read_alert(catalog, value)
    if subject == RETRAIN_SUBJECT:
        return read_retrain(catalog, value)
    try:
        return decode_avro(catalog, value, (subject,))
    except BadRecord as exc:
        return exc.skip()


def dead_letter_reason(headers: Any) -> str:
    """The ``driftline.errors.reason`` header of a dead letter, printable and short whatever the record holds."""
    try:
        raw = dict(cast(Headers, headers or [])).get("driftline.errors.reason")
    except (TypeError, ValueError):
        raw = None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else "?"
    text = "".join(c if c.isprintable() else "?" for c in text[:MAX_REASON])
    return text or "?"


def monitor(settings: Settings, catalog: SchemaCatalog, watch: Watch, stop: threading.Event,
            started: float, colour: bool = False) -> None:
    """Follow predictions and dead letters from the beginning; update ``watch``."""
    pred_topic, dlq_topic = settings.topic("predictions"), settings.topic("deadletter")
    alert_topic, retrain_topic = settings.topic("alerts"), settings.topic("retrain")
    consumer = Consumer(settings.confluent(**{
        "group.id": "driftline-up-monitor", "enable.auto.commit": False,
        "fetch.wait.max.ms": settings.fetch_wait_ms,
    }))
    parts = settings.topic_partitions()
    sketch_topic, explain_topic = settings.topic("sketches"), settings.topic("explanations")
    watched = (pred_topic, dlq_topic, alert_topic, retrain_topic, sketch_topic, explain_topic)
    consumer.assign([TopicPartition(t, p, 0) for t in watched for p in range(parts[t])])
    subjects = {pred_topic: "driftline.Prediction", alert_topic: ALERT_SUBJECT, retrain_topic: RETRAIN_SUBJECT,
                explain_topic: "driftline.Explanation"}
    skips = SkipLog(log)
    try:
        while not stop.is_set():
            for m in consumer.consume(5000, timeout=0.05):
                if m.error():
                    continue
                topic = str(m.topic())
                if topic == dlq_topic:  # any record: the worker's own dead letters are counted by their header
                    watch.deadletters += 1
                    watch.reasons[dead_letter_reason(read_headers(m)[0])] += 1
                    continue
                if topic == sketch_topic:  # the bias audit's per-segment counts
                    if not watch.add_sketch(m.value()):
                        watch.skipped += 1
                    continue
                rec = read_watched(catalog, m.value(), subjects[topic])
                if isinstance(rec, Skip):
                    skips.skip(topic, m.partition(), m.offset(), m.key(), rec)
                    watch.skipped += 1
                elif topic == explain_topic:
                    if not (isinstance(rec, dict) and watch.add_explanation(rec)):
                        watch.skipped += 1
                elif isinstance(rec, dict):  # a prediction
                    watch.predictions += 1
                    watch.latencies_ms.append(time.time() * 1000 - float(rec["event_time"]))
                    if watch.first_prediction_s is None:
                        watch.first_prediction_s = time.monotonic() - started
                else:
                    watch.events.append(format_event(rec, colour=colour))
                    if topic == alert_topic:
                        watch.alerts += 1
                    else:
                        watch.retrains += 1
            now = time.monotonic()
            watch.rate_window.append((now, watch.predictions + watch.deadletters))
            watch.rate_window = [(t, n) for t, n in watch.rate_window if now - t <= 5.0]
            watch.latencies_ms = watch.latencies_ms[-20_000:]
            watch.events = watch.events[-1000:]  # what the last screen shows at most
    finally:
        consumer.close()


def render(watch: Watch, elapsed: float, duration: float, drift_at: float | None, bootstrap: str,
           max_events: int = 6, dashboard: str = "") -> str:
    lat = np.asarray(watch.latencies_ms[-5000:]) if watch.latencies_ms else None
    p50, p99 = (np.percentile(lat, [50, 99]) if lat is not None else (float("nan"),) * 2)
    phase = "" if drift_at is None else ("  DRIFTING" if elapsed >= drift_at else f"  drift at {drift_at:.0f}s")
    lines = [
        f"driftline up — broker {bootstrap} — {elapsed:5.1f}s / {duration:.0f}s{phase}",
        *([f"  dashboard    {dashboard}"] if dashboard else []),
        f"  events/s     {watch.rate():9.0f}",
        f"  produced     {watch.produced:9d}",
        f"  predictions  {watch.predictions:9d}",
        f"  dead letters {watch.deadletters:9d}  "
        + ", ".join(f"{k}={v}" for k, v in watch.reasons.most_common()),
        f"  latency ms   p50 {p50:7.1f}   p99 {p99:7.1f}",
        f"  alerts       {watch.alerts:9d}   retrain requests {watch.retrains}",
        *(f"    {line}" for line in watch.events[-max_events:]),
    ]
    if watch.last_explanation is not None:
        rid, top = watch.last_explanation
        lines.append(f"  explained    {watch.explained:9d}   last {rid}: "
                     + ", ".join(f"{name} {value:+.2f}" for name, value in top)
                     + "  (driftline explain REQUEST_ID)")
    lines += segment_lines(watch.segments)
    if watch.skipped:
        lines.append(f"  skipped {watch.skipped} records that do not parse (see the log for where)")
    return "\n".join(lines)


def segment_lines(segments: dict[str, SegmentCounts], values: int = 5) -> list[str]:
    """Per segment field: the positive-decision rate of its most frequent values, and their spread."""
    out = ["  positive decisions by segment (every window so far)"] if segments else []
    for name, counts in sorted(segments.items()):
        top = counts.capped(values + 1)
        spread = disparities(top).demographic_parity_difference
        rates = "  ".join(f"{g.value} {g.positive_rate:.1%}" for g in
                          sorted(group_rates(top), key=lambda g: (g.value == OTHER, -g.requests)))
        out.append(f"  {name:<12} {rates}  (spread {spread:.1%})")
    return out


def run_up(settings: Settings, *, duration: float, rate: float, drift_at: float | None,
           out: TextIO = sys.stdout, broker_kind: BrokerKind = "embedded") -> dict[str, int]:
    """Run the whole demo on a broker of that kind; returns (and prints last) the record count of every topic."""
    if not Path(settings.model_dir).is_dir():
        raise ConfigError(f"driftline up runs the bundled fraud example, and there is no model registry at "
                          f"{settings.model_dir}: unset DRIFTLINE_MODEL_DIR to use the one driftline ships, or "
                          "write it out with `driftline example DIR` and set DRIFTLINE_MODEL_DIR=DIR/models")
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    broker = launch(broker_kind, port=9092, log_file=data_dir / "broker.log")
    bootstrap = broker.bootstrap
    stop = threading.Event()
    worker: subprocess.Popen[bytes] | None = None
    trainer: subprocess.Popen[bytes] | None = None
    try:
        settings = settings.model_copy(update={"broker": bootstrap})
        ensure_topics(settings)
        catalog = build_catalog(settings, writes=True)
        models = data_dir / "models"  # a scratch registry: the trainer registers challengers into it
        shutil.rmtree(models, ignore_errors=True)
        shutil.copytree(settings.model_dir, models)
        registry = ModelRegistry(models)
        pinned = [{"name": b.name, "version": registry.path(b.name, b.version).name} for b in settings.models]
        # What serves is on the control topic from the start: a version registered from a second terminal is
        # then a candidate to shadow or promote, not the champion of a configured "latest".
        control = Producer(settings.producer_config())
        for pin in pinned:
            write_deployment(control, settings, Deployment(pin["name"], pin["version"],
                                                           updated_at=int(time.time() * 1000)),
                             reason="driftline up: the configured version")
        env = {**os.environ, "DRIFTLINE_BROKER": bootstrap, "DRIFTLINE_SESSION_TIMEOUT_S": "6",
               "DRIFTLINE_WINDOW_S": str(settings.window_s), "DRIFTLINE_WINDOW_GRACE_S": str(settings.window_grace_s),
               "DRIFTLINE_MODEL_DIR": str(models), "DRIFTLINE_FEEDBACK": "true",
               "DRIFTLINE_WEB_HOST": "127.0.0.1",  # a local demo: its dashboard and metrics stay on this machine
               "DRIFTLINE_MODELS": json.dumps(pinned),  # pinned: challengers join this registry
               # labels come a second after their requests: joined ids need not be remembered for an hour
               "DRIFTLINE_FEEDBACK_TTL_S": "120",
               # a demo-sized loop: train on 1,500 labels, decide after 1,000 labeled shadow requests
               "DRIFTLINE_TRAINER_MIN_LABELS": "1500", "DRIFTLINE_TRAINER_SHADOW_LABELS": "1000",
               "DRIFTLINE_TRAINER_WAIT_S": "60", "DRIFTLINE_TRAINER_SHADOW_WAIT_S": "60",
               # explanations of a few requests (`driftline explain REQUEST_ID`), unless set otherwise
               "DRIFTLINE_EXPLAIN_FRACTION": str(settings.explain_fraction or DEMO_EXPLAIN_FRACTION)}
        with (data_dir / "worker.log").open("wb") as log_file:
            worker = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "driftline.streams.cli", "worker"], env=env, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        with (data_dir / "trainer.log").open("wb") as log_file:
            trainer = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "driftline.streams.cli", "trainer"], env={**env, "DRIFTLINE_WEB_PORT": "0"},
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        print(f"broker {bootstrap}; worker pid {worker.pid} (log {data_dir / 'worker.log'}); "
              f"trainer pid {trainer.pid} (log {data_dir / 'trainer.log'})", file=out)
        dashboard = f"http://127.0.0.1:{settings.web_port}/"
        print(f"dashboard: {dashboard}  (metrics /metrics, readiness /readyz)", file=out)
        print(f"in another terminal, for tail, alerts, status, model …:\n"
              f"  export DRIFTLINE_BROKER={bootstrap} DRIFTLINE_MODEL_DIR={models.resolve()}\n"
              f"  driftline tail {settings.topic('predictions')}\n"
              f"  driftline explain REQUEST_ID   (a request's attributions: see driftline tail "
              f"{settings.topic('explanations')})", file=out, flush=True)
        watch = Watch()
        threads = [
            threading.Thread(target=monitor, args=(settings, catalog, watch, stop, started, use_colour(out)),
                             daemon=True),
            threading.Thread(target=drive, args=(settings, catalog, rate, duration, drift_at, watch, stop),
                             daemon=True),
        ]
        for t in threads:
            t.start()
        tty = out.isatty()
        t0 = time.monotonic()
        last_print = 0.0
        try:
            while threads[1].is_alive():
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.returncode}; see {data_dir / 'worker.log'}")
                elapsed = time.monotonic() - t0
                if tty:
                    out.write("\x1b[H\x1b[2J" + render(watch, elapsed, duration, drift_at, bootstrap,
                                                          dashboard=dashboard) + "\n")
                    out.flush()
                elif elapsed - last_print >= 5:
                    print(render(watch, elapsed, duration, drift_at, bootstrap), file=out, flush=True)
                    last_print = elapsed
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("stopping…", file=out)
        stop.set()
        threads[1].join(timeout=30)
        drain_deadline = time.monotonic() + 30  # let the worker finish what was produced
        while time.monotonic() < drain_deadline and watch.predictions + watch.deadletters < watch.produced:
            time.sleep(0.2)
        # Let the last window close and its alerts arrive (window + grace + a margin).
        settle = time.monotonic() + settings.window_s + settings.window_grace_s + 2
        while time.monotonic() < settle and worker.poll() is None:
            time.sleep(0.2)
        print(render(watch, time.monotonic() - t0, duration, drift_at, bootstrap, max_events=1000), file=out)
        if watch.first_prediction_s is not None:
            print(f"first prediction {watch.first_prediction_s:.1f}s after start", file=out)
    finally:
        stop.set()
        if trainer is not None and trainer.poll() is None:
            trainer.terminate()
            trainer.wait(timeout=20)
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        counts: dict[str, int] = {}
        try:
            conf = settings.confluent()
            counts = {t: count_records(conf, t) for t in settings.topic_partitions()}
        finally:
            broker.stop()
    print(json.dumps(counts), file=out, flush=True)
    return counts
