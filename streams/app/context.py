"""What the worker's flows share: the clients, the pipeline, metrics, progress, and how the process stops.

One :class:`WorkerContext` is built by :func:`driftline.streams.app.worker.build_app`
and handed to each flow (score, control, web; drift and feedback take what
they need). It holds no logic of a flow, only what two or more of them use.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn

import faust
from prometheus_client import CollectorRegistry

from driftline.detectors.sketch import WindowSketch
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.observe import Liveness, Progress, Recent, readiness
from driftline.streams.core.pipeline import OutRecord, ScorePipeline
from driftline.streams.errors import BrokerError, DeliveryError
from driftline.streams.kafka.clients import BatchSource, Sink
from driftline.streams.metrics import Metrics
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)
EXIT_DELIVERY = 70  # outputs could not be delivered, or a Kafka client became unusable (broker lost its state)
EXIT_CRASH = 71  # a worker loop raised: a bug; nothing after the failure was committed


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


GC_THRESHOLDS = (20_000, 50, 50)  # Python's: (700, 10, 10)


def settle_heap() -> None:
    """Freeze what start-up built and collect garbage rarely: the score path allocates far more than it keeps.

    Measured on the 2-core machine at ~40,000 requests/s: with Python's
    defaults the worker ran 6 full collections in 7 s of scoring, the longest
    207 ms (every request in flight waits for one) and 1.2 s of CPU in all;
    with start-up's ~180,000 objects frozen (never scanned again) and these
    thresholds, none. Only reference cycles wait longer to be freed;
    everything else is freed by reference counting as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def add_thread_loop(app: faust.App, name: str, step: Callable[[], None], close: Callable[[], None]) -> None:
    """A task of ``app`` that runs ``step`` again and again on a thread of its own, then ``close`` there.

    The event loop only awaits the steps, so a slow one (a restore, a batch of
    explanations) never delays scoring or Faust's heartbeats. A delivery or
    broker failure stops the worker; anything else the loop raises is a bug
    in the loop (one record's failure is handled inside ``step``): the worker
    exits as crashed rather than run on without it.
    """
    thread = ThreadPoolExecutor(1, thread_name_prefix=f"driftline-{name}")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        try:
            while not app.should_stop:
                await loop.run_in_executor(thread, step)
        except (DeliveryError, BrokerError) as exc:
            fatal(exc)
        except Exception as exc:  # noqa: BLE001 - see above
            fatal(exc, EXIT_CRASH)
        finally:
            thread.submit(close)
            thread.shutdown(wait=False)

    run.__name__ = run.__qualname__ = name  # Faust names the task after its function
    app.task(run)


SHUTDOWN_GRACE_S = 10.0  # after the score path has stopped and stored its offsets, how long Faust may take to stop


def exit_if_stuck(grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Exit (code 0) if the process is still alive ``grace_s`` after the score path finished stopping.

    Called once the score loop has flushed and stored what it did: nothing
    is left to lose. aiokafka's group consumer can hang while it stops (its
    heartbeat retries "coordinator not available" for ever, seen on Apache
    Kafka right after a rebalance), which would hold a rolling update for its
    whole grace period.
    """
    def watchdog() -> None:
        time.sleep(grace_s)
        log.warning("still stopping %gs after the score path stopped (Faust's consumer is stuck); exiting", grace_s)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watchdog, name="driftline-exit-watchdog", daemon=True).start()


def contributor_id() -> str:
    """This process among the workers that contribute window sketches."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerContext:
    """The worker's shared parts; built once, before the app starts."""

    settings: Settings
    catalog: SchemaCatalog
    pipeline: ScorePipeline
    registry: CollectorRegistry
    metrics: Metrics
    sink: Sink
    source: BatchSource
    progress: Progress
    recent: Recent = field(default_factory=Recent)
    liveness: Liveness = field(default_factory=Liveness)
    contributor: str = field(default_factory=contributor_id)
    probe: dict[str, Any] = field(default_factory=lambda: {"at": 0.0, "problem": None})

    def client_problem(self) -> str | None:
        """Why the Kafka clients cannot go on (librdkafka's fatal errors), or None."""
        return self.sink.fatal_error or self.source.fatal_error

    def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness now, from the last broker probe (see the web flow's ``/readyz``)."""
        source = self.catalog.source
        return readiness(self.progress, time.time(), broker_problem=self.client_problem() or self.probe["problem"],
                         models_ready={s.model.name: s.model.ready for s in self.pipeline.served.values()},
                         schema_registry=None if source is None else (getattr(source, "problem", None) or "ok"))

    def store_acknowledged(self, timeout_s: float = 0.0) -> None:
        """Store the offsets of every batch the broker has acknowledged; a failed delivery stops the process."""
        try:
            for msgs in self.sink.poll(timeout_s):
                self.source.store_through(msgs)
        except DeliveryError as exc:
            fatal(exc)

    def sketch_records(self, sketches: list[WindowSketch]) -> list[OutRecord]:
        """Window sketches for the drift agent, keyed by model so one agent merges a model's windows."""
        topic = self.settings.topic("sketches")
        return [OutRecord(topic, s.model.encode(), json.dumps(s.to_dict()).encode()) for s in sketches]
