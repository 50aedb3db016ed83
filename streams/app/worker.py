"""The worker: one Faust app that wires the flows together; each flow lives in its own module.

- :mod:`~driftline.streams.app.score`: requests → predictions, dead letters, window sketches.
- :mod:`~driftline.streams.app.control`: deployments from the control topic, applied between batches.
- :mod:`~driftline.streams.app.drift`: the workers' sketches merged into drift alerts and retrain requests.
- :mod:`~driftline.streams.app.feedback`: labels joined to predictions; quality and concept drift (opt-in).
- :mod:`~driftline.streams.app.web`: metrics, health, readiness, the dashboard.

They share one :class:`~driftline.streams.app.context.WorkerContext`. Models
load in :func:`build_app`, so a bad model stops the worker before it consumes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from driftline.inference.model import CUDA
from driftline.streams.app.context import WorkerContext
from driftline.streams.app.control import add_control_flow, publish_deployment
from driftline.streams.app.drift import add_drift_agent
from driftline.streams.app.score import REVOKE_DRAIN_S, Scoring, add_score_flow, build_pipeline, deadletter_limit
from driftline.streams.app.web import add_web_pages
from driftline.streams.catalog import build_catalog
from driftline.streams.core.events import Alert
from driftline.streams.core.observe import Progress
from driftline.streams.errors import ConfigError
from driftline.streams.kafka.clients import AckedSink, BatchSource, Sink, TransactionalSink
from driftline.streams.kafka.control import ControlFollower
from driftline.streams.kafka.topics import ensure_topics, topic_max_message_bytes, wait_for_broker
from driftline.streams.kafka.transactions import default_transactional_id, transactions_problem
from driftline.streams.metrics import Metrics
from driftline.streams.settings import KafkaSecurity, Settings

log = logging.getLogger(__name__)


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


def build_sink(settings: Settings, source: BatchSource) -> Sink:
    """At least once: outputs acknowledged, then offsets stored; exactly once: both in one transaction."""
    if not settings.exactly_once:
        return AckedSink(settings.producer_config())
    txid = settings.transactional_id or default_transactional_id(
        settings.namespace, socket.gethostname(), os.environ.get("DRIFTLINE_PROCESS_INDEX"))
    log.info("exactly once: transactional id %s, a transaction every %d ms", txid, settings.transaction_ms)
    return TransactionalSink(settings.transactional_producer_config(txid), source.transaction_offsets,
                             commit_every_s=settings.transaction_ms / 1000,
                             max_batches=settings.max_inflight_batches)


def check_exactly_once(settings: Settings) -> None:
    """Exactly-once promised on a broker without working transactions would be a lie: stop at start instead."""
    if not settings.exactly_once:
        return
    problem = transactions_problem(settings.confluent(log_level=0), settings.topic("txn-probe"))
    if problem is not None:
        raise ConfigError(f"processing_guarantee=exactly_once needs a broker with transactions, and at "
                          f"{settings.broker} {problem}: use Apache Kafka, or set processing_guarantee=at_least_once")


def build_app(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """The worker app; models load here, so a bad model stops it before it consumes."""
    catalog = build_catalog(settings)
    follower = ControlFollower(settings.confluent(), settings.topic("models"))
    refused: list[Alert] = []
    pipeline = build_pipeline(settings, catalog, follower.read_to_end(), refused,
                              deadletter_limit(settings, topic_max_message_bytes(settings.confluent(),
                                                                                 settings.topic("deadletter"))))
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    for served in pipeline.served.values():
        publish_deployment(metrics, served)
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
    scoring = Scoring()
    sinks: list[Sink] = []  # the sink needs the source (transaction offsets), the source asks the sink if it is busy
    source = BatchSource(settings.consumer_config(), list(pipeline.served),
                         busy=lambda: scoring.active or sinks[0].in_flight > 0, drain_timeout_s=REVOKE_DRAIN_S,
                         transactional=settings.exactly_once)
    sinks.append(build_sink(settings, source))
    sink = sinks[0]
    ctx = WorkerContext(settings, catalog, pipeline, registry, metrics, sink, source,
                        Progress(time.time(), settings.stall_s))
    add_score_flow(app, ctx, scoring)
    add_control_flow(app, ctx, follower, refused)
    add_drift_agent(app, settings, catalog, metrics, ctx.recent)
    if settings.feedback:
        from driftline.streams.app.feedback import add_feedback_agent

        add_feedback_agent(app, settings, catalog, {s.model.name: s for s in pipeline.served.values()}, metrics)
    add_web_pages(app, ctx)
    app.driftline_metrics = metrics  # type: ignore[attr-defined]
    return app


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
    check_exactly_once(settings)
    app = build_app(settings)
    Worker(app, loglevel="info", quiet=True).execute_from_commandline()
