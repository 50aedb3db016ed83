"""The explain agent: ``{ns}.scored`` → ``{ns}.explanations``, on a thread and a consumer group of its own.

Off the score path by construction: it reads what the score agent already
produced, in the group ``{ns}-explain``, so scoring never waits for it; if it
falls behind, its own lag grows, not the score agent's. Its estimates run on
its own one-thread ONNX sessions. Offsets are stored once a batch's
explanations are acknowledged (at least once: a restart may explain a
request again, under the same key).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import faust

from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.explain import FAILED, ExplainConfig, ExplainCore, ExplainStats, summary
from driftline.streams.core.pipeline import RawMessage
from driftline.streams.core.sealing import Opener
from driftline.streams.errors import DeliveryError
from driftline.streams.kafka.clients import AckedSink, BatchSource
from driftline.streams.metrics import Metrics
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)

BATCH_MAX = 500  # scored records per step: at most this many estimates between two polls
POLL_S = 0.2
DRAIN_S = 10.0


@dataclass
class ExplainLoop:
    """Poll a batch, explain its picked requests, send, store the offsets of acknowledged batches in order."""

    core: ExplainCore
    source: BatchSource
    sink: AckedSink
    metrics: Metrics
    max_inflight: int = 8
    order: deque[tuple[list[RawMessage], list[bool]]] = field(default_factory=deque)

    def step(self) -> None:
        problem = self.sink.fatal_error or self.source.fatal_error
        if problem is not None:
            raise DeliveryError(f"{problem}; the explanations cannot be acknowledged")
        msgs = self.source.poll_batch(BATCH_MAX, POLL_S)
        if msgs:
            try:
                out, stats = self.core.batch([m.value for m in msgs])
            except Exception as exc:  # noqa: BLE001 - a bug on one batch must not stop scoring: counted, logged
                log.exception("an explain batch of %d records failed (%s); its requests are not explained",
                              len(msgs), type(exc).__name__)
                out, stats = [], ExplainStats()
                stats.skipped["?", FAILED] += len(msgs)
            self.metrics.observe_explain(stats)
            if stats.explained or stats.skipped:
                log.debug("explain batch: %s", summary(stats))
            token: tuple[list[RawMessage], list[bool]] = (msgs, [False])
            self.order.append(token)
            self.sink.send(out, token)
        self.acknowledged(0.0)
        while self.sink.in_flight > self.max_inflight:
            self.acknowledged(0.01)

    def acknowledged(self, timeout_s: float) -> None:
        for _, done in self.sink.poll(timeout_s):
            done[0] = True
        while self.order and self.order[0][1][0]:
            self.source.store_through(self.order.popleft()[0])

    def busy(self) -> bool:
        self.acknowledged(0.0)
        return self.sink.in_flight > 0

    def close(self) -> None:
        try:
            for _, done in self.sink.flush(DRAIN_S):
                done[0] = True
            self.acknowledged(0.0)
        except DeliveryError as exc:
            log.warning("explain agent stopping with unacknowledged explanations (redone after a restart): %s", exc)
        self.source.close()


def add_explain_agent(app: faust.App, settings: Settings, catalog: SchemaCatalog, metrics: Metrics) -> None:
    """A task that runs :class:`ExplainLoop` steps on the explain thread; the event loop only awaits them."""
    from driftline.streams.app.context import add_thread_loop

    key = settings.pii_secret()
    core = ExplainCore(ModelRegistry(settings.model_dir), catalog, settings.topic("explanations"),
                       ExplainConfig(settings.explain_fraction, settings.explain_samples,
                                     settings.explain_background, settings.explain_max_rows,
                                     int(settings.window_s * 1000)),
                       opener=None if key is None else Opener(key), verify_key=settings.model_verify_key())
    conf = {**settings.consumer_config(f"{settings.namespace}-explain"), "max.poll.interval.ms": 300_000}
    holder: list[ExplainLoop] = []
    source = BatchSource(conf, [settings.topic("scored")], busy=lambda: holder[0].busy(), drain_timeout_s=DRAIN_S)
    runner = ExplainLoop(core, source, AckedSink(settings.producer_config()), metrics, settings.max_inflight_batches)
    holder.append(runner)
    log.info("explaining %.3g of requests (%d coalitions x %d background rows each)", settings.explain_fraction,
             settings.explain_samples, settings.explain_background)
    add_thread_loop(app, "explain", runner.step, runner.close)
