"""The score flow: requests in, predictions, dead letters and window sketches out, offsets stored once acknowledged.

One task consumes with librdkafka and scores with the pure
:class:`~driftline.streams.core.pipeline.ScorePipeline`; a second stores
the offsets of acknowledged batches, closes idle drift windows and
refreshes lag. Delivery reports are served on the sink's own thread and
wake both tasks when a batch is acknowledged (no timer polls for them). A
worker killed at any point redoes at most the unacknowledged batches after
restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, cast

import faust
from prometheus_client import Counter

from driftline.detectors.profile import ReferenceProfile
from driftline.inference.deployment import Deployment
from driftline.inference.errors import ModelError
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.pii import Redactor
from driftline.streams.app.context import (
    EXIT_CRASH,
    WorkerContext,
    contributor_id,
    exit_if_stuck,
    fatal,
    settle_heap,
)
from driftline.streams.app.rollout import load_failed_alert, loader_from, refused_version
from driftline.streams.catalog import build_catalog
from driftline.streams.core.events import Alert
from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.windows import WindowFolder
from driftline.streams.errors import ConfigError, DeliveryError
from driftline.streams.kafka.clients import AckedSink
from driftline.streams.metrics import SCORE_STAGES
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)
REVOKE_DRAIN_S = 10.0  # how long a revocation waits for in-flight batches to be acknowledged
TICK_S = 0.5  # idle windows close, lag and readiness refresh this often
POLL_S = 0.002  # how often a sink that cannot wake us (transactions) is asked for finished batches
WAKE_TIMEOUT_S = 0.1  # a wait on acknowledgements looks again after this long, should a wake-up be lost


class Acknowledged:
    """Set (from the sink's delivery thread, through the loop) whenever the broker acknowledges a batch.

    One event per waiter: the score loop waits on ``backpressure`` while too
    many batches are in flight, the acknowledgement task on ``stored``.
    """

    def __init__(self) -> None:
        self.backpressure = asyncio.Event()
        self.stored = asyncio.Event()

    def set(self) -> None:
        self.backpressure.set()
        self.stored.set()


async def wait_for_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until ``event`` is set or ``timeout_s`` passes (the caller clears it before it looks)."""
    if event.is_set():
        return
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass


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
                        length_ms=None if events else int(settings.window_s * 1000), length_events=events,
                        max_ids=settings.duplicate_check_ids)


def build_pipeline(settings: Settings, catalog: SchemaCatalog | None = None,
                   deployments: Mapping[str, Deployment] | None = None,
                   refused: list[Alert] | None = None, deadletter_bytes: int | None = None
                   ) -> ScorePipeline:
    """Load every served model, as its deployment record says, and wire it to its requests topic.

    A model with a deployment on the control topic serves that; one whose
    deployment cannot load falls back to the configured version, and the
    refusal is added to ``refused`` as an alert.
    """
    catalog = catalog or build_catalog(settings, writes=True)
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
                    refused.append(load_failed_alert(binding.name, refused_version(exc, dep), str(exc),
                                                     int(time.time() * 1000)))
        sm.set_folder(build_folder(settings, sm.model, contributor))
        served[settings.requests_topic(binding)] = sm
    return ScorePipeline(
        served,
        catalog.latest("driftline.Prediction"),
        redactor=redactor_for(settings, catalog, served),
        predictions_topic=settings.topic("predictions"),
        deadletter_topic=settings.topic("deadletter"),
        deadletter_max_bytes=deadletter_bytes or settings.deadletter_max_bytes,
        shadow_topic=settings.topic("predictions.shadow"),
        scored=(catalog.latest("driftline.Scored"), settings.topic("scored"))
        if settings.feedback or settings.explain_fraction > 0 else None,
        pii_key=pii_key_for(settings, served),
        scored_fraction=1.0 if settings.feedback else settings.explain_fraction,
    )


def pii_key_for(settings: Settings, served: Mapping[str, ServedModel]) -> bytes | None:
    """The PII key; a worker whose models would send a personal value out in clear without it stops at start.

    A personal entity key is pseudonymised on every prediction, and a model
    that reads personal fields has its input rows sealed on ``{ns}.scored``
    (with feedback or explanations on): both need the key, whatever ``deadletter_pii`` says.
    """
    key = settings.pii_secret()
    if key is not None:
        return key
    for s in served.values():
        why = s.needs_pii_key(settings.feedback or settings.explain_fraction > 0)
        if why is not None:
            raise ConfigError(f"{why}: set DRIFTLINE_PII_KEY (or DRIFTLINE_PII_KEY_FILE) to pseudonymise or seal "
                              "its personal values")
    return None


def redactor_for(settings: Settings, catalog: SchemaCatalog, served: Mapping[str, ServedModel]) -> Redactor | None:
    """What pseudonymises personal values in dead letters; None where no served model has any, or with ``keep``.

    A model with personal fields and ``deadletter_pii=redact`` needs the PII
    key: without it the worker stops at start with one line.
    """
    if settings.deadletter_pii == "keep" or not any(s.personal for s in served.values()):
        return None
    key = settings.pii_secret()
    if key is None:
        names = ", ".join(sorted({f for s in served.values() for f in s.personal}))
        raise ConfigError(f"personal fields ({names}) would be dead-lettered in clear: set DRIFTLINE_PII_KEY (or "
                          "DRIFTLINE_PII_KEY_FILE) to pseudonymise them, or DRIFTLINE_DEADLETTER_PII=keep")
    return Redactor(catalog, key)


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


class StageCpu(NamedTuple):
    """The score loop's CPU counters, one per stage of a batch (looked up once, not per batch)."""

    process: Counter
    send: Counter
    observe: Counter


class Scoring:
    """Whether a batch is between poll and send: a revocation waits while it is (see :class:`BatchSource`)."""

    def __init__(self) -> None:
        self.active = False


def add_score_flow(app: faust.App, ctx: WorkerContext, scoring: Scoring) -> None:
    """The score and acknowledgement tasks of ``app``."""
    settings, pipeline, sink, source, metrics, progress = (
        ctx.settings, ctx.pipeline, ctx.sink, ctx.source, ctx.metrics, ctx.progress)
    topics = list(pipeline.served)
    consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="driftline-consume")
    stall_after = settings.fault_stall_after_batches
    wait_s = settings.batch_wait_ms / 1000
    linger_s = settings.batch_linger_ms / 1000
    acked = Acknowledged()
    cpu = StageCpu(*(metrics.score_cpu.labels(stage) for stage in SCORE_STAGES))
    wakes = isinstance(sink, AckedSink)  # a transactional sink is done when it commits: asked on a timer

    def next_batch() -> list[RawMessage]:
        """Poll, then look up the batch's new schema ids (a registry): on the consumer thread, never on the loop."""
        msgs = source.poll_batch(settings.batch_max, wait_s, linger_s=linger_s, fill=settings.batch_fill)
        if msgs and ctx.catalog.source is not None:
            pipeline.prepare(msgs)
        return msgs

    def score_batch(msgs: list[RawMessage]) -> None:
        """Score, send and account for one batch; its offsets are stored once the broker acknowledges it."""
        progress.backlog = len(msgs)
        started = time.thread_time()
        outcome = pipeline.process_safely(msgs, int(time.time() * 1000))
        processed = time.thread_time()
        sink.send(outcome.predictions + outcome.shadow_predictions + outcome.scored + outcome.deadletters
                  + ctx.sketch_records(outcome.sketches), msgs)
        sent = time.thread_time()
        for error in outcome.shadow_errors:
            log.warning("shadow scoring failed (served traffic unaffected): %s", error)
        metrics.observe_batch(len(msgs), outcome, time.time())
        progress.backlog = 0
        progress.batch_done(time.time())
        cpu.process.inc(processed - started)
        cpu.send.inc(sent - processed)
        cpu.observe.inc(time.thread_time() - sent)

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
        done = 0
        settle_heap()
        ctx.liveness.started("score")
        try:
            polling = loop.run_in_executor(consumer_thread, next_batch)
            while not app.should_stop:
                msgs = await polling
                scoring.active = bool(msgs)
                polling = loop.run_in_executor(consumer_thread, next_batch)
                if msgs:
                    if stall_after is not None and done >= stall_after:
                        log.warning("fault injection: the score agent stalls now (fault_stall_after_batches=%d)",
                                    done)
                        await asyncio.Event().wait()  # an await that never returns: the failure /readyz must catch
                    done += 1
                    try:
                        score_batch(msgs)
                    finally:
                        scoring.active = False
                ctx.store_acknowledged()
                while sink.in_flight > settings.max_inflight_batches:
                    acked.backpressure.clear()
                    ctx.store_acknowledged()
                    if sink.in_flight <= settings.max_inflight_batches:
                        break
                    await wait_for_event(acked.backpressure, WAKE_TIMEOUT_S if wakes else POLL_S / 2)
        except DeliveryError as exc:
            fatal(exc)
        except Exception as exc:  # noqa: BLE001 - a dead score loop behind a live process is the worst failure
            fatal(exc, EXIT_CRASH)
        finally:
            ctx.liveness.stopped("score", "the score loop has ended")
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
            exit_if_stuck()

    @app.task
    async def acknowledge() -> None:
        """Store acknowledged batches' offsets as the sink reports them; close idle windows, refresh lag."""
        next_tick = 0.0
        ctx.liveness.started("acknowledge")
        if wakes:
            loop = asyncio.get_running_loop()

            def wake() -> None:
                try:
                    loop.call_soon_threadsafe(acked.set)
                except RuntimeError:  # the loop closed at shutdown: nobody waits any more
                    pass

            cast(AckedSink, sink).wake_on_delivery(wake)
        try:
            while not app.should_stop:
                acked.stored.clear()
                ctx.store_acknowledged()
                problem = ctx.client_problem()
                if problem is not None:
                    metrics.ready.set(0.0)
                    fatal(DeliveryError(f"{problem}; its outputs cannot be acknowledged"))
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    closed = pipeline.tick(int(time.time() * 1000))
                    if closed:
                        sink.send(ctx.sketch_records(closed), [])
                    await asyncio.get_running_loop().run_in_executor(None, source.refresh_watermarks)
                    lag = source.lag()
                    metrics.observe_lag(lag)
                    progress.lag = sum(lag.values())
                    metrics.ready.set(1.0 if ctx.ready()[0] else 0.0)
                if wakes:
                    await wait_for_event(acked.stored, max(0.0, next_tick - time.monotonic()))
                else:
                    await asyncio.sleep(POLL_S)
        except DeliveryError as exc:
            fatal(exc)
        except Exception as exc:  # noqa: BLE001 - see score()
            fatal(exc, EXIT_CRASH)
        finally:
            ctx.liveness.stopped("acknowledge", "the acknowledgement loop has ended")
