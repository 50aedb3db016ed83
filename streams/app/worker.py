"""The worker: a Faust app whose score agent receives one event per batch.

A task reads batches with a confluent-kafka consumer and puts each on an
in-memory channel; the score agent runs the pure :class:`ScorePipeline`,
produces predictions and dead letters through librdkafka, waits for the
acknowledgements and only then stores the batch's offsets. A worker killed at
any point redoes at most the unacknowledged batches after restart.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import faust
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.deployment import Deployment, live_variants
from driftline.inference.errors import ModelError
from driftline.inference.model import CUDA, OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode
from driftline.streams.app.drift import add_drift_agent
from driftline.streams.app.rollout import load_failed_alert, loader_from
from driftline.streams.catalog import build_catalog
from driftline.streams.core.observe import Liveness, Progress, Recent, readiness
from driftline.streams.core.pipeline import OutRecord, RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.windows import WindowFolder
from driftline.streams.errors import ConfigError, DeliveryError
from driftline.streams.kafka.clients import AckedSink, BatchSource
from driftline.streams.kafka.control import ControlFollower
from driftline.streams.kafka.topics import ensure_topics, topic_max_message_bytes, wait_for_broker
from driftline.streams.metrics import Metrics
from driftline.streams.settings import KafkaSecurity, Settings

log = logging.getLogger(__name__)
EXIT_DELIVERY = 70  # outputs could not be delivered, or a Kafka client became unusable (broker lost its state)
EXIT_CRASH = 71  # a worker loop raised: a bug; nothing after the failure was committed
REVOKE_DRAIN_S = 10.0  # how long a revocation waits for in-flight batches to be acknowledged


@functools.cache
def dashboard_html() -> str:
    """The dashboard page: one self-contained file (no CDN), read once."""
    return (Path(__file__).parent / "web" / "dashboard.html").read_text()


def contributor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_folder(settings: Settings, model: OnnxModel, contributor: str) -> WindowFolder | None:
    """Drift windows for a model whose version has a reference profile."""
    if not settings.drift:
        return None
    path = model.directory / PROFILE_FILE
    if not path.is_file():
        log.warning("model %s v%s has no %s: no drift monitoring (driftline profile build)",
                    model.name, model.version, PROFILE_FILE)
        return None
    events = settings.window_events
    return WindowFolder(ReferenceProfile.load(path), model.name, model.version, contributor,
                        length_ms=None if events else int(settings.window_s * 1000), length_events=events)


def build_pipeline(settings: Settings, catalog: SchemaCatalog | None = None,
                   deployments: Mapping[str, Deployment] | None = None,
                   refused: list[dict[str, Any]] | None = None, deadletter_bytes: int | None = None
                   ) -> ScorePipeline:
    """Load every served model, as its deployment record says, and wire it to its requests topic.

    A model with a deployment on the control topic serves that; one whose
    deployment cannot load falls back to the configured version, and the
    refusal is added to ``refused`` as an alert record.
    """
    catalog = catalog or build_catalog(settings)
    contributor = contributor_id()
    loader = loader_from(settings)
    served: dict[str, ServedModel] = {}
    for binding in settings.models:
        model = loader.load(binding.name, binding.version)
        sm = ServedModel(model, catalog, max_message_bytes=settings.max_message_bytes)
        dep = (deployments or {}).get(binding.name)
        if dep is not None and dep != sm.deployment:
            try:
                models = loader.prepare(dep, sm.versions)
                for unused in sm.deploy(dep, models):
                    unused.unload()
            except ModelError as exc:
                log.error("deployment of %s refused at start (%s); serving v%s", binding.name, exc, model.version)
                if refused is not None:
                    refused.append(load_failed_alert(binding.name, dep.champion, str(exc), int(time.time() * 1000)))
        sm.set_folder(build_folder(settings, sm.model, contributor))
        served[settings.requests_topic(binding)] = sm
    return ScorePipeline(
        served,
        catalog.latest("driftline.Prediction"),
        predictions_topic=settings.topic("predictions"),
        deadletter_topic=settings.topic("deadletter"),
        deadletter_max_bytes=deadletter_bytes or settings.deadletter_max_bytes,
        shadow_topic=settings.topic("predictions.shadow"),
        scored=(catalog.latest("driftline.Scored"), settings.topic("scored")) if settings.feedback else None,
    )


def deadletter_limit(settings: Settings, topic_limit: int | None) -> int:
    """Dead letters are bounded below ``deadletter_max_bytes`` and below the dead-letter topic's own limit.

    A topic configured with a smaller ``max.message.bytes`` than the setting
    would refuse a large dead letter, and the batch with it, on every restart.
    """
    if topic_limit is None or topic_limit >= settings.deadletter_max_bytes:
        return settings.deadletter_max_bytes
    log.warning("the dead-letter topic accepts at most %d bytes (max.message.bytes), less than "
                "deadletter_max_bytes=%d: dead letters are cut to fit it", topic_limit, settings.deadletter_max_bytes)
    return topic_limit


def publish_deployment(metrics: Metrics, served: ServedModel) -> None:
    dep = served.deployment
    live = [(ver, var, served.versions[ver].active_provider or "none")
            for var, ver in live_variants(dep)]
    metrics.set_deployment(dep.model, live)


def faust_credentials(kafka: KafkaSecurity) -> Any:
    """Faust's ``broker_credentials`` (None for PLAINTEXT)."""
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials
    from faust.types.auth import SASLMechanism

    if kafka.security_protocol == "PLAINTEXT":
        return None
    context = None
    if kafka.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH,
            cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None,
        )
        if kafka.ssl_cert_file and kafka.ssl_key_file:
            context.load_cert_chain(
                str(kafka.ssl_cert_file), str(kafka.ssl_key_file),
                password=kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
            )
    if kafka.sasl_mechanism:
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        mechanism = SASLMechanism(kafka.sasl_mechanism)
        return SASLCredentials(
            username=kafka.sasl_username, password=password, mechanism=mechanism, ssl_context=context
        )
    return SSLCredentials(context)


def build_app(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """The worker app; models load here, so a bad model stops it before it consumes."""
    catalog = build_catalog(settings)
    follower = ControlFollower(settings.confluent(), settings.topic("models"))
    refused: list[dict[str, Any]] = []
    pipeline = build_pipeline(settings, catalog, follower.read_to_end(), refused,
                              deadletter_limit(settings, topic_max_message_bytes(settings.confluent(),
                                                                                 settings.topic("deadletter"))))
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    for served in pipeline.served.values():
        publish_deployment(metrics, served)
    progress = Progress(time.time(), settings.stall_s)
    recent = Recent()
    timeout = max(int(settings.session_timeout_s), 6)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.namespace}-worker",
        broker=[f"kafka://{b.strip()}" for b in settings.broker.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
        web_port=settings.web_port,
        web_host="0.0.0.0",  # noqa: S104 - probes and Prometheus scrape from outside the pod
        datadir=str(Path(settings.data_dir) / "faust"),
        topic_disable_leader=True,
        broker_session_timeout=timeout,
        broker_rebalance_timeout=timeout,
        broker_heartbeat_interval=1,
        broker_request_timeout=max(30, timeout),
        autodiscover=False,
        store="memory://",
    )
    topics = list(pipeline.served)
    consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="driftline-consume")
    sink = AckedSink(settings.producer_config())
    scoring = [False]  # a batch is between poll and send
    source = BatchSource(settings.consumer_config(), topics,
                         busy=lambda: scoring[0] or sink.in_flight > 0, drain_timeout_s=REVOKE_DRAIN_S)
    liveness = Liveness()

    def store_acknowledged(timeout_s: float = 0.0) -> None:
        try:
            for msgs in sink.poll(timeout_s):
                source.store_through(msgs)
        except DeliveryError as exc:
            fatal(exc)

    def client_problem() -> str | None:
        """Why the Kafka clients cannot go on (librdkafka's fatal errors), or None."""
        return sink.fatal_error or source.fatal_error

    sketches_topic_name = settings.topic("sketches")

    def sketch_records(sketches: list[WindowSketch]) -> list[OutRecord]:
        return [OutRecord(sketches_topic_name, s.model.encode(), json.dumps(s.to_dict()).encode()) for s in sketches]

    def score_batch(msgs: list[RawMessage]) -> None:
        """Score, send and account for one batch; its offsets are stored once the broker acknowledges it."""
        progress.backlog = len(msgs)
        outcome = pipeline.process_safely(msgs, int(time.time() * 1000))
        sink.send(outcome.predictions + outcome.shadow_predictions + outcome.scored + outcome.deadletters
                  + sketch_records(outcome.sketches), msgs)
        for error in outcome.shadow_errors:
            log.warning("shadow scoring failed (served traffic unaffected): %s", error)
        metrics.observe_batch(len(msgs), outcome, time.time())
        progress.backlog = 0
        progress.batch_done(time.time())

    stall_after = settings.fault_stall_after_batches

    @app.task
    async def score() -> None:
        """Consume batches with librdkafka and score them, in one task.

        No queue stands between consuming and scoring (a Faust channel is
        cleared on every rebalance of Faust's own consumer, which lost whole
        batches): the next poll runs on the consumer thread while this batch
        is scored, and a revocation waits there for this batch's
        acknowledgements (see :class:`BatchSource`).
        """
        loop = asyncio.get_running_loop()
        log.info("consuming %s as group %s", ", ".join(topics), settings.score_group)
        wait_s = settings.batch_wait_ms / 1000
        done = 0
        liveness.started("score")
        try:
            polling = loop.run_in_executor(consumer_thread, source.poll_batch, settings.batch_max, wait_s)
            while not app.should_stop:
                msgs = await polling
                scoring[0] = bool(msgs)
                polling = loop.run_in_executor(consumer_thread, source.poll_batch, settings.batch_max, wait_s)
                if msgs:
                    if stall_after is not None and done >= stall_after:
                        log.warning("fault injection: the score agent stalls now (fault_stall_after_batches=%d)",
                                    done)
                        await asyncio.Event().wait()  # an await that never returns: the failure /readyz must catch
                    done += 1
                    try:
                        score_batch(msgs)
                    finally:
                        scoring[0] = False
                store_acknowledged()
                while sink.in_flight > settings.max_inflight_batches:
                    await asyncio.sleep(0.001)
                    store_acknowledged()
        except DeliveryError as exc:
            fatal(exc)
        except Exception as exc:  # noqa: BLE001 - a dead score loop behind a live process is the worst failure
            fatal(exc, EXIT_CRASH)
        finally:
            liveness.stopped("score", "the score loop has ended")
            # Store what the broker has acknowledged, then close (after any in-flight
            # poll on the same thread), which commits the stored offsets and leaves
            # the group at once. Unacknowledged batches are redone after a restart.
            try:
                for finished in sink.flush(10):
                    source.store_through(finished)
            except DeliveryError as exc:
                log.warning("stopping with unacknowledged outputs: %s", exc)
            consumer_thread.submit(source.close)
            consumer_thread.shutdown(wait=False)

    @app.task
    async def acknowledge() -> None:
        """Serve delivery reports while the score loop waits for its next batch; close idle windows."""
        next_tick = 0.0
        liveness.started("acknowledge")
        try:
            while not app.should_stop:
                store_acknowledged()
                problem = client_problem()
                if problem is not None:
                    metrics.ready.set(0.0)
                    fatal(DeliveryError(f"{problem}; its outputs cannot be acknowledged"))
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 0.5
                    closed = pipeline.tick(int(time.time() * 1000))
                    if closed:
                        sink.send(sketch_records(closed), [])
                    await asyncio.get_running_loop().run_in_executor(None, source.refresh_watermarks)
                    lag = source.lag()
                    metrics.observe_lag(lag)
                    progress.lag = sum(lag.values())
                    metrics.ready.set(1.0 if ready_now(None)[0] else 0.0)
                await asyncio.sleep(0.002)
        except DeliveryError as exc:
            fatal(exc)
        except Exception as exc:  # noqa: BLE001 - see score()
            fatal(exc, EXIT_CRASH)
        finally:
            liveness.stopped("acknowledge", "the acknowledgement loop has ended")

    add_drift_agent(app, settings, catalog, metrics, recent)
    if settings.feedback:
        from driftline.streams.app.feedback import add_feedback_agent

        add_feedback_agent(app, settings, catalog, {s.model.name: s for s in pipeline.served.values()},
                           metrics, recent)

    alert_schema = catalog.latest("driftline.Alert")
    alerts = app.topic(settings.topic("alerts"), key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=settings.partitions.alerts)
    loader = loader_from(settings)
    by_model = {s.model.name: s for s in pipeline.served.values()}
    control_thread = ThreadPoolExecutor(1, thread_name_prefix="driftline-control")
    contributor = contributor_id()

    async def refuse(model: str, version: str, reason: str) -> None:
        rec = load_failed_alert(model, version, reason, int(time.time() * 1000))
        log.error("alert critical model_load_failed: %s %s", model, rec["message"])
        metrics.deployment_changes.labels(model, "refused").inc()
        metrics.alerts.labels(model, "model_load_failed", "critical").inc()
        recent.add_alert(rec)
        await alerts.send(key=model.encode(), value=encode(alert_schema, rec, fast=True))

    async def apply(dep: Deployment) -> None:
        """Load what ``dep`` needs off the event loop, then switch between two batches."""
        served = by_model.get(dep.model)
        if served is None:
            log.info("deployment of %s ignored: this worker does not serve it", dep.model)
            return
        if dep == served.deployment:
            return
        loop = asyncio.get_running_loop()
        try:
            models = await loop.run_in_executor(control_thread, loader.prepare, dep, served.versions)
            champion_before = served.deployment.champion
            unused = served.deploy(dep, models)  # no await between here and the end: atomic for the agent
        except (ModelError, ConfigError) as exc:
            await refuse(dep.model, dep.champion, str(exc))
            return
        for m in unused:
            m.unload()
        if dep.champion != champion_before:
            sink.send(sketch_records(served.set_folder(build_folder(settings, served.model, contributor))), [])
        publish_deployment(metrics, served)
        metrics.deployment_changes.labels(dep.model, "applied").inc()
        log.info("deployment applied: %s", dep.describe())

    @app.task
    async def follow_control() -> None:
        """Deployment records (last one per model wins), applied between batches without a restart.

        Control records that are not deployments were skipped by the follower,
        at start or since: each is counted and raises a critical
        bad_control_record alert, and what served before keeps serving.
        """
        from driftline.streams.app.rollout import bad_control_alert

        async def report_skipped() -> None:
            counts, kept = follower.skips.drain()
            for (topic, reason), n in counts.items():
                metrics.skipped.labels(topic, reason).inc(n)
            for skipped in kept:
                rec = bad_control_alert(skipped, by_model, int(time.time() * 1000))
                log.error("alert critical bad_control_record: %s", rec["message"])
                metrics.alerts.labels(rec["model"], "bad_control_record", "critical").inc()
                recent.add_alert(rec)
                await alerts.send(key=rec["model"].encode(), value=encode(alert_schema, rec, fast=True))

        for rec in refused:
            await alerts.send(key=rec["model"].encode(), value=encode(alert_schema, rec, fast=True))
        loop = asyncio.get_running_loop()
        try:
            await report_skipped()
            while not app.should_stop:
                for dep in await loop.run_in_executor(control_thread, follower.poll, 0.5):
                    await apply(dep)
                await report_skipped()
        finally:
            control_thread.submit(follower.close)
            control_thread.shutdown(wait=False)

    @app.page("/metrics")
    async def metrics_page(_self: Any, request: Any) -> Any:
        return _self.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(_self: Any, request: Any) -> Any:
        """200 while the score and acknowledgement loops run and the Kafka clients are usable; else 503."""
        problems = liveness.problems()
        if (problem := client_problem()) is not None:
            problems["kafka"] = problem
        if problems:
            return _self.json({"status": "dead", "problems": problems}, status=503)
        return _self.json({"status": "alive"})

    probe: dict[str, Any] = {"at": 0.0, "problem": None}

    def ready_now(broker_problem: str | None) -> tuple[bool, dict[str, str]]:
        return readiness(progress, time.time(), broker_problem=client_problem() or broker_problem or probe["problem"],
                         models_ready={s.model.name: s.model.ready for s in pipeline.served.values()})

    @app.page("/readyz")
    async def readyz(_self: Any, request: Any) -> Any:
        """200 when the broker answers, every model is loaded and the score path is not stalled; else 503."""
        if time.monotonic() - probe["at"] > 3.0:  # at most one metadata request every 3 s
            loop = asyncio.get_running_loop()
            probe["problem"] = await loop.run_in_executor(None, source.reachable)
            probe["at"] = time.monotonic()
        ok, checks = ready_now(None)
        metrics.ready.set(1.0 if ok else 0.0)
        return _self.json({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)

    @app.page("/")
    async def dashboard(_self: Any, request: Any) -> Any:
        return _self.html(dashboard_html())

    @app.page("/api/recent")
    async def recent_page(_self: Any, request: Any) -> Any:
        return _self.json(recent.to_dict())

    app.driftline_metrics = metrics  # type: ignore[attr-defined]
    return app


def fatal(exc: BaseException, code: int = EXIT_DELIVERY) -> NoReturn:
    """Stop the process at once without storing more offsets: a restart redoes the unfinished batches.

    Used when outputs could not be delivered (``EXIT_DELIVERY``) or a loop
    of the worker raised (``EXIT_CRASH``). Exiting (rather than letting Faust
    restart a task) hands the decision to the supervisor and keeps the
    at-least-once promise simple: nothing after the failure is committed.
    """
    log.critical("%s: %s; exiting with code %d so the supervisor restarts the worker",
                 type(exc).__name__, exc, code)
    logging.shutdown()
    os._exit(code)


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/Ctrl-C (exits the process, as Faust's worker does)."""
    from faust.worker import Worker

    if settings.require_gpu:
        import onnxruntime as ort

        if CUDA not in ort.get_available_providers():
            raise ConfigError(
                "require_gpu is set but this ONNX Runtime has no CUDA provider "
                f"({', '.join(ort.get_available_providers())}); install driftline[gpu] on a machine with CUDA, "
                "or unset DRIFTLINE_REQUIRE_GPU"
            )
    wait_for_broker(settings.confluent(), settings.broker_wait_s)
    created = ensure_topics(settings)
    if created:
        log.info("created missing topics: %s", ", ".join(created))
    app = build_app(settings)
    Worker(app, loglevel="info", quiet=True).execute_from_commandline()
