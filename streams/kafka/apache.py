"""A local, single-node Apache Kafka that driftline starts itself: the tests' second broker, ``driftline up``'s option.

One JVM in KRaft combined mode (broker and controller), a PLAINTEXT and a
CONTROLLER listener on free loopback ports, a temporary log directory, the
internal topics at replication factor 1. The clients' listener may be a
secured one instead (TLS, mutual TLS, SASL/SCRAM-SHA-512, or SCRAM over TLS:
``tls=`` and ``scram_users=``); the PLAINTEXT listener then stays on loopback
for the broker itself (inter-broker traffic, the readiness probe). The jars
come from Maven Central the first time (``make kafka``, or the first
:meth:`ApacheKafka.start`), through the small pom shipped beside this module,
into a cache that outlives the process: ``$DRIFTLINE_KAFKA_HOME/libs``, by
default ``~/.cache/driftline/kafka-<version>/libs``. ``DRIFTLINE_KAFKA_HOME``
may also point at an unpacked Apache Kafka download, whose ``libs/`` has the
same layout.

Unlike the embedded broker, this one has working transactions, compaction, a
message-size limit (``message.max.bytes``, about 1 MiB) and right latest
offsets; it needs Java 17 or newer (and Maven for the first fetch), and takes
a few seconds to start.

Run ``python -m driftline.streams.kafka.apache`` to fetch the jars and print where they are.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Literal

from driftline.streams.errors import BrokerError
from driftline.streams.kafka.broker import BrokerKind, free_port, wait_for_metadata

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"  # the version apache-kafka.pom.xml pins
POM = "apache-kafka.pom.xml"
SERVER_CLASS = "kafka.Kafka"  # what Kafka's bin/kafka-server-start.sh runs
STORAGE_CLASS = "kafka.tools.StorageTool"  # what bin/kafka-storage.sh runs
HOME_ENV = "DRIFTLINE_KAFKA_HOME"

INSTALL_JAVA = "Apache Kafka needs Java 17 or newer: install a JRE (Debian: apt-get install openjdk-17-jre-headless)"
INSTALL_MAVEN = (
    "fetching Apache Kafka's jars needs Maven: install it (Debian: apt-get install maven), "
    f"or set {HOME_ENV} to an unpacked Apache Kafka {KAFKA_VERSION}"
)

# Kafka logs through log4j2 to stdout (the log file); its configuration dumps go, the rest stays at INFO.
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.config.name = org.apache.kafka.common.config
logger.config.level = warn
logger.change.name = state.change.logger
logger.change.level = warn
"""


def kafka_home(env: Mapping[str, str] | None = None) -> Path:
    """``$DRIFTLINE_KAFKA_HOME``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/driftline/kafka-<version>``."""
    env = os.environ if env is None else env
    explicit = env.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "driftline" / f"kafka-{KAFKA_VERSION}"


def jar_dir(home: Path) -> Path:
    return home / "libs"


def has_jars(libs: Path) -> bool:
    """Whether ``libs`` holds a Kafka server: the Scala ``kafka_2.13`` jar (the broker's main class lives there)."""
    return libs.is_dir() and any(libs.glob("kafka_2.13-*.jar"))


def classpath(libs: Path) -> str:
    """The JVM's ``-cp``: every jar of the folder (the JVM expands ``DIR/*`` itself)."""
    return str(libs / "*")


def pom_text() -> str:
    return resources.files("driftline.streams.kafka").joinpath(POM).read_text(encoding="utf-8")


def fetch_jars(home: Path | None = None, *, timeout_s: float = 600.0) -> Path:
    """The folder of Kafka's jars under ``home``, fetched with Maven if it has none; raises one line if it can't.

    Maven writes into a fresh folder beside ``libs`` that is renamed into place
    when complete, so an interrupted fetch leaves nothing half done, and two
    processes fetching at once both end with the same, whole folder.
    """
    home = kafka_home() if home is None else home
    libs = jar_dir(home)
    if has_jars(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(INSTALL_MAVEN)
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=home))
    try:
        (work / "pom.xml").write_text(pom_text(), encoding="utf-8")
        out = work / "libs"
        started = time.monotonic()
        log.info("fetching Apache Kafka %s's jars with Maven into %s", KAFKA_VERSION, libs)
        try:
            done = subprocess.run(  # noqa: S603 - Maven, fixed arguments
                [mvn, "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                 f"-DoutputDirectory={out}"],
                cwd=work, capture_output=True, text=True, timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"fetching Apache Kafka {KAFKA_VERSION} with Maven took over {timeout_s:.0f}s; "
                              "check access to Maven Central") from exc
        if done.returncode != 0 or not has_jars(out):
            lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "ERROR" in ln] or lines
            why = errors[0][:300] if errors else f"exit code {done.returncode}"
            raise BrokerError(f"could not fetch Apache Kafka {KAFKA_VERSION} with Maven (needs access to Maven "
                              f"Central, or set {HOME_ENV}): {why}")
        try:
            out.rename(libs)
        except OSError:
            if not has_jars(libs):  # not another process that got there first
                raise
        log.info("fetched Apache Kafka %s (%d jars) in %.1fs", KAFKA_VERSION, len(list(libs.glob("*.jar"))),
                 time.monotonic() - started)
        return libs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def find_java(env: Mapping[str, str] | None = None) -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH; raises one line saying what to install."""
    env = os.environ if env is None else env
    if env.get("JAVA_HOME"):
        candidate = Path(env["JAVA_HOME"]) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerError(INSTALL_JAVA)
    return found


def cluster_id() -> str:
    """A random cluster id as Kafka writes them: 16 bytes, URL-safe base64 without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
ClientAuth = Literal["none", "requested", "required"]
CLIENT_LISTENER = "CLIENT"  # the secured listener's name (the PLAINTEXT one keeps its name)
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 4096  # Kafka's default, and the least it accepts for SCRAM-SHA-512
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class ServerTls:
    """The broker's side of TLS on the clients' listener, as PEM files.

    ``cert_file``: the broker's certificate, then any intermediates; clients
    verify its subjectAltName, so it names ``IP:127.0.0.1``.
    ``key_file``: its private key, PKCS#8 PEM, not encrypted (what ``openssl
    req -nodes`` writes). ``ca_file``: the CA certificates that sign the
    clients' certificates, needed unless ``client_auth`` is ``"none"``.
    ``client_auth``: ``"required"`` is mutual TLS (a client without a
    certificate from ``ca_file`` is refused); ``"requested"`` asks for one.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    client_auth: ClientAuth = "none"

    def __post_init__(self) -> None:
        if self.client_auth != "none" and self.ca_file is None:
            raise ValueError(f"client_auth={self.client_auth} needs ca_file: the CA of the clients' certificates")


@dataclass(frozen=True)
class ClientListener:
    """The secured listener clients are told about (named ``CLIENT``): what :func:`server_properties` writes.

    ``keystore``: one PEM file holding the broker's key, then its certificate
    chain (SSL and SASL_SSL); ``truststore``: PEM CA certificates for client
    certificates. SASL listeners take SCRAM-SHA-512, whose users are stored
    when the log folder is formatted (:func:`scram_argument`).
    """

    port: int
    protocol: SecurityProtocol
    keystore: Path | None = None
    truststore: Path | None = None
    client_auth: ClientAuth = "none"

    def __post_init__(self) -> None:
        tls = self.protocol.endswith("SSL")
        if tls != (self.keystore is not None):
            raise ValueError(f"a {self.protocol} listener {'needs' if tls else 'takes no'} keystore")
        if self.client_auth != "none" and (not tls or self.truststore is None):
            raise ValueError(f"client_auth={self.client_auth} needs TLS and a truststore")

    def properties(self) -> dict[str, object]:
        """The ``listener.name.client.*`` settings: its TLS stores, its SASL mechanism."""
        prefix = f"listener.name.{CLIENT_LISTENER.lower()}."
        props: dict[str, object] = {}
        if self.keystore is not None:
            props |= {"ssl.keystore.type": "PEM", "ssl.keystore.location": self.keystore,
                      "ssl.client.auth": self.client_auth}
        if self.truststore is not None:
            props |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": self.truststore}
        if self.protocol.startswith("SASL"):
            props |= {"sasl.enabled.mechanisms": SCRAM_MECHANISM,
                      f"{SCRAM_MECHANISM.lower()}.sasl.jaas.config": SCRAM_LOGIN}
        return {prefix + key: value for key, value in props.items()}


def listener_protocol(*, tls: bool, sasl: bool) -> SecurityProtocol:
    """The security protocol of a listener with or without TLS and SASL."""
    if tls:
        return "SASL_SSL" if sasl else "SSL"
    return "SASL_PLAINTEXT" if sasl else "PLAINTEXT"


def check_scram_user(name: str, password: str) -> None:
    """A ValueError unless ``kafka-storage format`` can store this user (the message never holds the password)."""
    if not name or "," in name:
        raise ValueError(f"SCRAM user name {name!r}: give a non-empty name without commas")
    if not password:
        raise ValueError(f"SCRAM user {name}: give a non-empty password")


def scram_argument(name: str, password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """``kafka-storage format --add-scram``'s value for one SCRAM-SHA-512 user, without the password in it.

    The salted password (RFC 5802's ``Hi``: PBKDF2-HMAC-SHA-512) is computed
    here with a random salt, so the clear password is never on a command line
    nor in a log. Kafka's parser splits on commas: a name with one is refused.
    """
    check_scram_user(name, password)
    if iterations < SCRAM_ITERATIONS:
        raise ValueError(f"SCRAM iterations must be at least {SCRAM_ITERATIONS}")
    salt = os.urandom(32) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return (f'{SCRAM_MECHANISM}=[name="{name}",salt="{b64(salt).decode()}",'
            f'saltedpassword="{b64(salted).decode()}",iterations={iterations}]')


def server_properties(*, port: int, controller_port: int, log_dir: Path, node_id: int = 1,
                      auto_create_topics: bool = True, client: ClientListener | None = None,
                      overrides: Mapping[str, object] | None = None) -> str:
    """``server.properties`` of a single-node KRaft broker+controller on loopback (``overrides`` win).

    ``client``: a secured listener for the clients, advertised beside the
    PLAINTEXT one at ``port``, which then serves the broker itself (inter-broker
    traffic, the readiness probe) and anything on this host that asks for it.
    """
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if client is not None:
        listeners.append(f"{CLIENT_LISTENER}://127.0.0.1:{client.port}")
        advertised.append(f"{CLIENT_LISTENER}://127.0.0.1:{client.port}")
        protocols.append(f"{CLIENT_LISTENER}:{client.protocol}")
    props: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": ",".join(protocols),
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "log.dirs": str(log_dir),
        "num.partitions": 1,
        "auto.create.topics.enable": str(auto_create_topics).lower(),
        # one node: every internal topic at replication factor 1 (the defaults, 3, never become available)
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # fewer partitions for the internal topics (50 by default): created in a moment on the first use
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.num.partitions": 4,
        "group.initial.rebalance.delay.ms": 0,
        # the log cleaner looks for work every second, so compaction shows within a test
        "log.cleaner.backoff.ms": 1000,
    }
    if client is not None:
        props.update(client.properties())
    props.update(overrides or {})
    return "".join(f"{key}={value}\n" for key, value in props.items())


def jvm_command(java: str, libs: Path, main: str, *args: str, heap: str = "512m",
                log_config: Path | None = None, short: bool = False) -> list[str]:
    """``java -Xmx<heap> -cp <libs>/* <main> <args>``, with the log4j2 configuration where given.

    ``short``: a tool that runs for a second (no optimising JIT, the serial collector: ~20 % faster).
    """
    tuning = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"] if short else ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    cmd = [java, f"-Xmx{heap}", *tuning, "-Djava.awt.headless=true"]
    if log_config is not None:
        cmd.append(f"-Dlog4j2.configurationFile={log_config}")
    return [*cmd, "-cp", classpath(libs), main, *args]


def _death_signal() -> Callable[[], None] | None:
    """What the child runs before exec so that it gets SIGKILL when the thread that started it dies (Linux).

    ``prctl`` is looked up here, in the parent: the child of a threaded
    process only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def die_with_parent() -> None:
        prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    return die_with_parent


FOLDER_PREFIX = "driftline-kafka-"
OWNER_FILE = "owner.pid"


def remove_orphans(parent: Path | None = None) -> list[Path]:
    """Remove the folders of brokers whose owner died without cleaning up (SIGKILL); returns those removed.

    The JVM itself dies with its owner (see :func:`_death_signal`); its folder stays until this runs.
    """
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    removed = []
    for folder in parent.glob(f"{FOLDER_PREFIX}*"):
        try:
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created, or not ours
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _another_port(taken: set[int]) -> int:
    """A free loopback port not in ``taken`` (which it joins)."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


def last_error(log_text: str) -> str:
    """The line of Kafka's log that best says why it stopped: the last ERROR (or exception), else the last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or "Exception" in line or line.startswith("Error")]
    found = (errors or lines or ["(no log)"])[-1]
    return found[:300]


def _why(path: Path) -> str:
    try:
        return last_error(path.read_text(errors="replace"))
    except OSError:
        return "(no log)"


class ApacheKafka:
    """Start/stop a single-node Apache Kafka (KRaft) on loopback ports in a temporary folder; a context manager.

    The interface of :class:`~driftline.streams.kafka.broker.EmbeddedBroker`.
    The JVM runs in its own process group and is stopped, and its folder
    removed, by :meth:`stop`, at interpreter exit, and (SIGKILL, Linux) when the
    process that started it dies.

    Examples
    --------
    >>> with ApacheKafka() as kafka:  # doctest: +SKIP
    ...     print(kafka.bootstrap)
    127.0.0.1:40123
    """

    kind: BrokerKind = "kafka"

    def __init__(self, *, port: int | None = None, log_file: Path | None = None, home: Path | None = None,
                 heap: str = "512m", config: Mapping[str, object] | None = None, tls: ServerTls | None = None,
                 scram_users: Mapping[str, str] | None = None) -> None:
        """``port``: the clients' port, preferred if free; ``home``: where the jars are (see :func:`kafka_home`);
        ``config``: broker properties over the defaults of :func:`server_properties`.

        ``tls``: the clients' listener speaks TLS with this certificate (and
        checks client certificates, ``tls.client_auth``); ``scram_users``:
        user name to password, and the clients' listener takes SASL
        SCRAM-SHA-512 with these users only (over TLS where ``tls`` is given:
        SASL_SSL). With either, :attr:`bootstrap` is that secured listener and
        :attr:`internal_bootstrap` a PLAINTEXT one on loopback for the broker
        itself. Passwords are stored salted at format time, never logged.
        """
        self.port = port
        self.internal_port: int | None = None
        self.controller_port: int | None = None
        self.log_file = log_file
        self.home = home
        self.heap = heap
        self.config = dict(config or {})
        self.tls = tls
        for name, password in (scram_users or {}).items():
            check_scram_user(name, password)
        self._scram_users = dict(scram_users or {})
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._started = False

    @property
    def pid(self) -> int | None:
        """The broker's JVM process id while it runs, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def security_protocol(self) -> SecurityProtocol:
        """What clients of :attr:`bootstrap` set as ``security.protocol``."""
        return listener_protocol(tls=self.tls is not None, sasl=bool(self._scram_users))

    @property
    def scram_user_names(self) -> tuple[str, ...]:
        return tuple(self._scram_users)

    @property
    def bootstrap(self) -> str:
        """The clients' listener: secured where ``tls`` or ``scram_users`` were given."""
        if self.port is None or not self._started:
            raise BrokerError("broker not started")
        return f"127.0.0.1:{self.port}"

    @property
    def internal_bootstrap(self) -> str:
        """The PLAINTEXT listener on loopback (the same as :attr:`bootstrap` when the broker is not secured)."""
        if self.internal_port is None or not self._started:
            raise BrokerError("broker not started")
        return f"127.0.0.1:{self.internal_port}"

    def start(self, timeout_s: float = 60.0) -> str:
        """Fetch the jars if needed, format a fresh log folder, start the JVM; the bootstrap address when it answers."""
        if self._proc is not None:
            return self.bootstrap
        java = find_java()
        libs = fetch_jars(self.home)
        started = time.monotonic()
        remove_orphans()
        self._dir = folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        (folder / OWNER_FILE).write_text(str(os.getpid()))
        atexit.register(self.stop)
        try:
            self._start(java, libs, folder, timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        self._started = True
        log.info("Apache Kafka %s ready at %s (%s) in %.1fs (log %s)", KAFKA_VERSION, self.bootstrap,
                 self.security_protocol, self.startup_s, self.log_file or folder / "kafka.log")
        return self.bootstrap

    def _start(self, java: str, libs: Path, folder: Path, timeout_s: float) -> None:
        self.port = free_port(self.port)
        taken = {self.port}
        self.controller_port = _another_port(taken)
        secured = self.security_protocol != "PLAINTEXT"
        self.internal_port = _another_port(taken) if secured else self.port
        client = self._client_listener(self.port, folder) if secured else None
        props = folder / "server.properties"
        props.write_text(server_properties(port=self.internal_port, controller_port=self.controller_port,
                                           log_dir=folder / "data", client=client, overrides=self.config))
        log_config = folder / "log4j2.properties"
        log_config.write_text(LOG4J2)
        log_path = self.log_file or folder / "kafka.log"
        # The users' salted passwords go on the command line, never the passwords; the command is not logged.
        scram = [arg for name, password in self._scram_users.items()
                 for arg in ("--add-scram", scram_argument(name, password))]
        with log_path.open("ab") as out:
            try:
                fmt = subprocess.run(  # noqa: S603 - java, fixed arguments
                    jvm_command(java, libs, STORAGE_CLASS, "format", "--standalone", "--cluster-id", cluster_id(),
                                "--config", str(props), *scram, heap="256m", log_config=log_config, short=True),
                    stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError(f"Kafka's storage format took over {timeout_s:.0f}s") from exc
            if fmt.returncode != 0:
                raise BrokerError(f"Kafka's storage format failed (exit {fmt.returncode}): {_why(log_path)}")
            self._proc = proc = subprocess.Popen(  # noqa: S603 - java, fixed arguments
                jvm_command(java, libs, SERVER_CLASS, str(props), heap=self.heap, log_config=log_config),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_death_signal(),
            )
        self._wait_ready(proc, timeout_s, log_path)

    def _client_listener(self, port: int, folder: Path) -> ClientListener:
        """The secured listener at ``port``; with TLS, its PEM keystore (key, then chain) written in ``folder``."""
        keystore = None
        if self.tls is not None:
            try:
                pem = self.tls.key_file.read_text() + "\n" + self.tls.cert_file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise BrokerError(f"cannot read the broker's TLS key and certificate: {exc}") from exc
            keystore = folder / "client-listener.keystore.pem"
            keystore.touch(mode=0o600)
            keystore.write_text(pem)
        return ClientListener(
            port=port, protocol=self.security_protocol, keystore=keystore,
            truststore=self.tls.ca_file if self.tls is not None else None,
            client_auth=self.tls.client_auth if self.tls is not None else "none",
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> None:
        try:
            # over the PLAINTEXT listener: it opens with the secured one, and needs no client credentials
            wait_for_metadata(f"127.0.0.1:{self.internal_port}", timeout_s, proc=proc, what="Apache Kafka")
        except BrokerError as exc:
            raise BrokerError(f"{exc}: {_why(log_path)}") from exc

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the JVM's process group (a clean shutdown), SIGKILL after ``timeout_s``; the folder removed."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        self._started = False
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        folder, self._dir = self._dir, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> int:
    """Fetch the jars (``make kafka``): print their folder, or one line saying what is missing (exit 1)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        find_java()
        print(fetch_jars())
    except BrokerError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
