"""The worker: one Faust app that wires the flows together; each flow lives in its own module.

- :mod:`~driftline.streams.app.score`: requests → predictions, dead letters, window sketches.
- :mod:`~driftline.streams.app.control`: deployments from the control topic, applied between batches.
- :mod:`~driftline.streams.app.drift`: the workers' sketches merged into drift alerts and retrain requests.
- :mod:`~driftline.streams.app.feedback`: labels joined to predictions; quality and concept drift (opt-in).
- :mod:`~driftline.streams.app.explain`: per-feature attributions of a share of requests (opt-in).
- :mod:`~driftline.streams.app.web`: metrics, health, readiness, the dashboard.

They share one :class:`~driftline.streams.app.context.WorkerContext`. Models
load in :func:`build_app`, so a bad model stops the worker before it consumes.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from driftline.inference.model import CUDA
from driftline.schemas import columnar as codec
from driftline.streams.app.context import WorkerContext
from driftline.streams.app.control import add_control_flow, publish_deployment
from driftline.streams.app.drift import add_drift_agent
from driftline.streams.app.score import REVOKE_DRAIN_S, Scoring, add_score_flow, build_pipeline, deadletter_limit
from driftline.streams.app.web import add_web_pages, web_options
from driftline.streams.catalog import build_catalog
from driftline.streams.core.events import Alert
from driftline.streams.core.observe import Progress
from driftline.streams.errors import ConfigError
from driftline.streams.kafka.clients import AckedSink, BatchSource, Sink, TransactionalSink
from driftline.streams.kafka.control import ControlFollower
from driftline.streams.kafka.topics import ensure_topics, topic_max_message_bytes, wait_for_broker
from driftline.streams.kafka.transactions import default_transactional_id, transactions_problem
from driftline.streams.metrics import Metrics
from driftline.streams.settings import KafkaSecurity, RepeatFilter, Settings

log = logging.getLogger(__name__)


def check_codec(wanted: str, built: tuple[str, ...]) -> None:
    """A worker told to use the compiled codec where it is not built stops at start (it would be slower, silently)."""
    if wanted == "compiled" and "compiled" not in built:
        raise ConfigError("DRIFTLINE_CODEC=compiled but the compiled codec is not built here: reinstall driftline "
                          "where a C compiler is available (pip install -e .), or unset DRIFTLINE_CODEC")


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
    catalog = build_catalog(settings, writes=True)
    follower = ControlFollower(settings.confluent(), settings.topic("models"), settings.control_secret())
    refused: list[Alert] = []
    pipeline = build_pipeline(settings, catalog, follower.read_to_end(), refused,
                              deadletter_limit(settings, topic_max_message_bytes(settings.confluent(),
                                                                                 settings.topic("deadletter"))))
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, settings.bias_max_values)
    for served in pipeline.served.values():
        metrics.init_model(served.model.name)
        publish_deployment(metrics, served)
    timeout = max(int(settings.session_timeout_s), 6)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.namespace}-worker",
        broker=[f"kafka://{b.strip()}" for b in settings.broker.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
        web_port=settings.web_port,
        web_bind=settings.web_host,  # where it listens (Faust's web_host only names it in URLs)
        **web_options(settings.web_host, settings.web_token_value(), settings.web_tls_cert_file,
                      settings.web_tls_key_file, open_ok=settings.web_open),
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
    if settings.explain_fraction > 0:
        from driftline.streams.app.explain import add_explain_agent

        add_explain_agent(app, settings, catalog, metrics)
    add_web_pages(app, ctx)
    app.driftline_metrics = metrics  # type: ignore[attr-defined]
    return app


def check_web_port(port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - where the worker will listen
    """The worker's web port must be free before it joins the consumer group: else one line, not a crash later.

    A second worker started on a busy port would take partitions and die when
    its web server starts; checked here, it stops before touching the broker.
    """
    if port == 0:
        return
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds: TIME_WAIT is no owner
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"web port {port} is in use: set DRIFTLINE_WEB_PORT or stop the other worker") from None
        raise ConfigError(f"cannot listen on web port {port} ({exc.strerror}): set DRIFTLINE_WEB_PORT") from None
    finally:
        probe.close()


STOP_DEADLINE_S = 30.0
"""After SIGTERM or Ctrl-C the worker exits within this, whatever hangs (a broker that is away): Kubernetes' grace
period is 40 s. Normally the score path stores its offsets and the process is gone in a few seconds."""

# Loggers whose warnings repeat for as long as a broker is away (aiokafka retries every 100 ms): one line a minute.
# Not mode.redirect (stderr as log lines: a traceback's lines must all stay).
NOISY_LOGGERS = ("aiokafka", "faust", "kafka")


def stop_watchdog(deadline_s: float = STOP_DEADLINE_S) -> threading.Thread:
    """Exit the process ``deadline_s`` from now if it is still alive (started once, on the first stop signal)."""
    def expire() -> None:
        time.sleep(deadline_s)
        log.warning("still stopping %gs after the stop signal; exiting now (unacknowledged batches are redone by "
                    "the next owner of their partitions)", deadline_s)
        logging.shutdown()
        os._exit(0)

    thread = threading.Thread(target=expire, name="driftline-stop-deadline", daemon=True)
    thread.start()
    return thread


def stop_while_starting() -> None:
    """SIGTERM or Ctrl-C before Faust runs (waiting for the broker, creating topics, loading models) stops at once.

    Until Faust installs its own handlers nothing handles SIGTERM, and a
    process that is PID 1 in its container ignores a signal it has no handler
    for: the worker went on waiting for the broker (``broker_wait_s``, 60 s)
    and Kubernetes killed it after its grace period. The deadline is armed
    too, for a wait inside the Kafka client that Python cannot interrupt.
    """
    armed: list[threading.Thread] = []

    def stop(signum: int, _frame: Any) -> None:
        if not armed:
            armed.append(stop_watchdog())
        log.info("%s while starting: stopping", signal.Signals(signum).name)
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def worker_class() -> type:
    """Faust's worker with driftline's stop deadline and repeated-warning filter."""
    from faust.worker import Worker

    class DriftlineWorker(Worker):  # type: ignore[misc]
        _stop_deadline: threading.Thread | None = None

        def _on_sigterm(self) -> None:
            log.info("worker stopping (SIGTERM)", extra={"event": "worker_stopping"})
            self._start_deadline()
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            self._start_deadline()
            super()._on_sigint()

        def _start_deadline(self) -> None:
            if self._stop_deadline is None:
                self._stop_deadline = stop_watchdog()

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            repeats = RepeatFilter(names=NOISY_LOGGERS, min_level=logging.WARNING)
            for handler in logger.handlers:
                handler.addFilter(repeats)

    return DriftlineWorker


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM/Ctrl-C (exits the process, as Faust's worker does)."""
    check_web_port(settings.web_port, settings.web_host)
    stop_while_starting()
    if settings.require_gpu:
        import onnxruntime as ort

        if CUDA not in ort.get_available_providers():
            raise ConfigError(
                "require_gpu is set but this ONNX Runtime has no CUDA provider "
                f"({', '.join(ort.get_available_providers())}); install driftline[gpu] on a machine with CUDA, "
                "or unset DRIFTLINE_REQUIRE_GPU"
            )
    if settings.schema_registry.url:  # a configuration check: before waiting a minute for the broker
        from driftline.streams.registry import SchemaRegistry

        SchemaRegistry(settings.schema_registry).check()
    check_codec(settings.codec, codec.IMPLEMENTATIONS)
    wait_for_broker(settings.confluent(), settings.broker_wait_s)
    created = ensure_topics(settings)
    if created:
        log.info("created missing topics: %s", ", ".join(created))
    check_exactly_once(settings)
    app = build_app(settings)
    from driftline.streams.logformat import faust_logging_config

    log.info("worker starting: namespace %s, models %s, %s Avro codec", settings.namespace,
             ", ".join(f"{b.name} {b.version}" for b in settings.models), codec.IMPLEMENTATION,
             extra={"event": "worker_started"})
    worker_class()(app, loglevel="info", quiet=True,
                   logging_config=faust_logging_config("info")).execute_from_commandline()
