"""A real Confluent-compatible Schema Registry for the tests: Apicurio Registry, in memory, from Maven Central.

Confluent's own registry is not on Maven Central, nor Karapace on PyPI;
Apicurio Registry 2.4.2 is, as a Quarkus module whose dependencies all
resolve there (3.x and 2.6 miss some). ``pom.xml`` beside this file turns it
into a runnable Quarkus fast-jar (about 20 s and 230 MB of jars the first
time, kept in ``~/.cache/driftline``), started on a free port; its
Confluent-compatible API is under ``/apis/ccompat/v7``. Like Confluent's
registry it gives one schema one id whatever subject it is registered
under. Unlike it, its default compatibility is NONE: :meth:`start` sets
BACKWARD, Confluent's default.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from driftline.streams.kafka.apache import find_java

VERSION = "2.4.2.Final"
HERE = Path(__file__).resolve().parent
HOME = Path(os.environ.get("DRIFTLINE_REGISTRY_HOME", Path.home() / ".cache" / "driftline" / f"apicurio-{VERSION}"))
API = "/apis/ccompat/v7"


def build(home: Path = HOME, timeout_s: float = 900.0) -> Path:
    """The registry's ``quarkus-run.jar``, built once with Maven (every artifact from Maven Central)."""
    jar = home / "target" / "quarkus-app" / "quarkus-run.jar"
    if jar.is_file():
        return jar
    mvn = shutil.which("mvn")
    assert mvn, "Maven is needed to build the test Schema Registry (make sysdeps installs it)"
    work = home.with_name(home.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("pom.xml", "settings.xml"):
        shutil.copy(HERE / name, work / name)
    repo = Path.home() / ".m2" / "repository"
    base = [mvn, "-B", "-q", "-ntp", "-Dstyle.color=never", "-s", str(work / "settings.xml"),
            f"-Dmaven.repo.local={repo}"]
    subprocess.run([*base, "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:get",  # noqa: S603
                    f"-Dartifact=io.apicurio:apicurio-registry-app:{VERSION}", "-Dtransitive=false"],
                   cwd=work, check=True, timeout=timeout_s)
    app = repo / "io" / "apicurio" / "apicurio-registry-app" / VERSION / f"apicurio-registry-app-{VERSION}.jar"
    with zipfile.ZipFile(app) as z:
        props = z.read("application.properties").decode()
    # The module's own properties package a legacy jar; the tests want the fast-jar, without the app jar twice.
    props = props.replace("%prod.quarkus.package.type=legacy-jar", "%prod.quarkus.package.type=fast-jar")
    props += "\nquarkus.class-loading.removed-artifacts=io.apicurio:apicurio-registry-app\n"
    (work / "src" / "main" / "resources").mkdir(parents=True)
    (work / "src" / "main" / "resources" / "application.properties").write_text(props)
    subprocess.run([*base, "package", "-DskipTests"], cwd=work, check=True, timeout=timeout_s)  # noqa: S603
    shutil.rmtree(home, ignore_errors=True)
    work.rename(home)
    return jar


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegistryServer:
    """One registry process; ``url`` is what ``schema_registry.url`` takes."""

    def __init__(self, log_file: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}{API}"
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> RegistryServer:
        jar = build()
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - java, fixed arguments
                [find_java(), "-Xmx256m", f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
                 "-jar", str(jar)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, self.log_file.read_text(errors="replace")[-3000:]
            try:
                self.request("GET", "/subjects")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, f"registry not up in {timeout_s}s"
                time.sleep(0.2)
        self.request("PUT", "/config", {"compatibility": "BACKWARD"})  # Confluent's default
        return self

    def request(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310 - local test server
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
            return json.loads(r.read() or b"null")

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted and never answered, like a hung registry."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
