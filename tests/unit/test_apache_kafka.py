"""The local Apache Kafka without starting it: its configuration, where its jars are, what it says when it can't."""

from __future__ import annotations

import base64
import os
import re
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from driftline.streams.errors import BrokerError
from driftline.streams.kafka import apache
from driftline.streams.kafka.apache import (
    KAFKA_VERSION,
    ApacheKafka,
    ClientListener,
    ServerTls,
    classpath,
    cluster_id,
    fetch_jars,
    find_java,
    has_jars,
    jar_dir,
    jvm_command,
    kafka_home,
    last_error,
    listener_protocol,
    pom_text,
    remove_orphans,
    scram_argument,
    server_properties,
)
from driftline.streams.kafka.broker import BROKER_KINDS, launch


def parse(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pairs = [line.split("=", 1) for line in lines]
    assert len({k for k, _ in pairs}) == len(pairs), "a key written twice"
    return dict(pairs)  # type: ignore[arg-type]


def test_server_properties_make_a_single_node_kraft_broker_on_loopback(tmp_path: Path) -> None:
    props = parse(server_properties(port=19092, controller_port=19093, log_dir=tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"  # clients never see the controller
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"


def test_overrides_win_and_auto_creation_can_be_switched_off(tmp_path: Path) -> None:
    text = server_properties(port=1, controller_port=2, log_dir=tmp_path, auto_create_topics=False,
                             overrides={"message.max.bytes": 5_000_000, "num.partitions": 4})
    props = parse(text)
    assert props["auto.create.topics.enable"] == "false"
    assert props["message.max.bytes"] == "5000000" and props["num.partitions"] == "4"


def test_the_jars_live_in_the_cache_unless_driftline_kafka_home_says_otherwise(tmp_path: Path) -> None:
    assert kafka_home({"HOME": "/h"}) == Path.home() / ".cache" / "driftline" / f"kafka-{KAFKA_VERSION}"
    assert kafka_home({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/driftline") / f"kafka-{KAFKA_VERSION}"
    assert kafka_home({"DRIFTLINE_KAFKA_HOME": str(tmp_path), "XDG_CACHE_HOME": "/xdg"}) == tmp_path
    assert jar_dir(tmp_path) == tmp_path / "libs"  # the layout of an unpacked Apache Kafka download
    assert classpath(tmp_path / "libs") == f"{tmp_path}/libs/*"


def test_a_folder_has_jars_only_with_the_broker_jar(tmp_path: Path) -> None:
    libs = tmp_path / "libs"
    assert not has_jars(libs)
    libs.mkdir()
    (libs / "kafka-clients-4.4.0.jar").touch()
    assert not has_jars(libs)
    (libs / "kafka_2.13-4.4.0.jar").touch()
    assert has_jars(libs)


def test_jars_already_there_are_used_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-4.4.0.jar").touch()
    monkeypatch.setattr(apache.shutil, "which", lambda name: pytest.fail(f"looked for {name}"))
    assert fetch_jars(tmp_path) == tmp_path / "libs"


def test_no_maven_is_one_line_that_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apache.shutil, "which", lambda name: None)
    with pytest.raises(BrokerError) as err:
        fetch_jars(tmp_path)
    assert "\n" not in str(err.value)
    assert "install it" in str(err.value) and "maven" in str(err.value) and "DRIFTLINE_KAFKA_HOME" in str(err.value)
    assert not (tmp_path / "libs").exists()


def test_a_failed_fetch_is_one_line_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "mvn"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '[ERROR] Failed to execute goal: Could not resolve dependencies'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(apache.shutil, "which", lambda name: str(fake))
    home = tmp_path / "home"
    with pytest.raises(BrokerError) as err:
        fetch_jars(home)
    message = str(err.value)
    assert "\n" not in message and "Maven Central" in message and "Could not resolve dependencies" in message
    assert list(home.iterdir()) == []  # no half-fetched folder


def test_no_java_is_one_line_that_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apache.shutil, "which", lambda name: None)
    with pytest.raises(BrokerError, match=r"Java 17.*apt-get install openjdk-17-jre-headless"):
        find_java({})
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(BrokerError, match="Java 17"):
        ApacheKafka().start()


def test_java_home_comes_first(tmp_path: Path) -> None:
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    assert find_java({"JAVA_HOME": str(tmp_path)}) == str(java)


def test_the_jvm_runs_the_main_class_with_a_capped_heap_and_the_log_configuration(tmp_path: Path) -> None:
    cmd = jvm_command("java", tmp_path / "libs", "kafka.Kafka", "server.properties", log_config=tmp_path / "l.p")
    assert cmd[0] == "java" and "-Xmx512m" in cmd
    assert f"-Dlog4j2.configurationFile={tmp_path / 'l.p'}" in cmd
    assert cmd[-4:] == ["-cp", f"{tmp_path}/libs/*", "kafka.Kafka", "server.properties"]


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", text) and not text.startswith("-")
        assert len(base64.urlsafe_b64decode(text + "==")) == 16


def test_the_shipped_pom_pins_the_version_the_code_names() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ElementTree.fromstring(pom_text())  # noqa: S314 - our own file
    deps = {(d.findtext("m:groupId", namespaces=ns), d.findtext("m:artifactId", namespaces=ns)):
            d.findtext("m:version", namespaces=ns) for d in root.iterfind("m:dependencies/m:dependency", ns)}
    assert deps[("org.apache.kafka", "kafka_2.13")] == KAFKA_VERSION


def test_a_broker_not_started_has_no_address_and_stops_quietly() -> None:
    kafka = ApacheKafka()
    with pytest.raises(BrokerError, match="not started"):
        _ = kafka.bootstrap
    kafka.stop()


def test_launch_knows_two_kinds() -> None:
    assert BROKER_KINDS == ("embedded", "kafka")
    with pytest.raises(BrokerError, match="unknown broker kind"):
        launch("zookeeper")  # type: ignore[arg-type]


def test_the_reason_kafka_stopped_is_its_last_error_line() -> None:
    log = ("[2026-01-01] INFO starting (kafka.Kafka)\n"
           "[2026-01-01] ERROR Exiting Kafka due to fatal exception (kafka.Kafka)\n"
           "org.apache.kafka.common.KafkaException: Socket server failed to bind to 127.0.0.1:9092: Address in use\n"
           "\tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:700)\n"
           "[2026-01-01] INFO shut down completed (kafka.server.BrokerServer)\n")
    assert last_error(log).startswith("org.apache.kafka.common.KafkaException: Socket server failed to bind")
    assert last_error("just one line\n") == "just one line"
    assert last_error("") == "(no log)"


def fake_install(tmp_path: Path, server: str) -> tuple[Path, Path]:
    """A Kafka home (the broker jar, empty) and a JAVA_HOME whose java formats and runs ``server`` as the broker."""
    home = tmp_path / "kafka"
    (home / "libs").mkdir(parents=True)
    (home / "libs" / "kafka_2.13-4.4.0.jar").touch()
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f'#!/bin/sh\ncase "$*" in *StorageTool*) echo formatted; exit 0;; esac\n{server}\n')
    java.chmod(0o755)
    return home, tmp_path / "jdk"


def test_a_broker_that_dies_at_start_is_one_line_and_leaves_no_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, jdk = fake_install(tmp_path, "echo '[x] ERROR Exiting Kafka due to fatal exception (kafka.Kafka)'; exit 1")
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    kafka = ApacheKafka(home=home)
    with pytest.raises(BrokerError) as err:
        kafka.start(timeout_s=10)
    assert str(err.value) == "Apache Kafka exited at start with code 1: [x] ERROR Exiting Kafka due to fatal " \
                             "exception (kafka.Kafka)"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_broker_that_never_answers_is_stopped_with_its_process_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = tmp_path / "pids"
    home, jdk = fake_install(tmp_path, f"sleep 300 & echo $$ $! > {pids}; wait")  # a child in the group too
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    kafka = ApacheKafka(home=home, log_file=tmp_path / "kafka.log")
    with pytest.raises(BrokerError, match=r"did not answer within 2s"):
        kafka.start(timeout_s=2)
    for pid in map(int, pids.read_text().split()):
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"process {pid} of the broker's group still runs")
    assert "formatted" in (tmp_path / "kafka.log").read_text()  # the log file given is kept


def test_folders_of_dead_owners_are_removed_and_the_rest_kept(tmp_path: Path) -> None:
    import subprocess

    gone = subprocess.Popen(["true"])  # a pid that has exited (and been reaped)
    gone.wait()
    orphan, mine, foreign, young = (tmp_path / f"driftline-kafka-{n}" for n in ("a", "b", "c", "d"))
    for folder in (orphan, mine, foreign, young):
        folder.mkdir()
    (orphan / "owner.pid").write_text(str(gone.pid))
    (mine / "owner.pid").write_text(str(os.getpid()))
    (foreign / "owner.pid").write_text("not a pid")  # young: no owner file yet
    assert remove_orphans(tmp_path) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driftline-kafka-b", "driftline-kafka-c",
                                                          "driftline-kafka-d"]


# -- a secured clients' listener: TLS, mutual TLS, SASL/SCRAM-SHA-512 -------------------------------------------


def test_a_secured_listener_is_advertised_beside_the_plaintext_one_the_broker_keeps(tmp_path: Path) -> None:
    client = ClientListener(port=19094, protocol="SASL_SSL", keystore=tmp_path / "ks.pem",
                            truststore=tmp_path / "ca.pem", client_auth="required")
    props = parse(server_properties(port=19092, controller_port=19093, log_dir=tmp_path, client=client))
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,"
                                  "CLIENT://127.0.0.1:19094")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092,CLIENT://127.0.0.1:19094"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,CLIENT:SASL_SSL"
    assert props["inter.broker.listener.name"] == "PLAINTEXT" and props["controller.listener.names"] == "CONTROLLER"
    # PEM stores and the SASL mechanism for that listener only; no password anywhere (SCRAM users live in the log)
    assert props["listener.name.client.ssl.keystore.type"] == "PEM"
    assert props["listener.name.client.ssl.keystore.location"] == str(tmp_path / "ks.pem")
    assert props["listener.name.client.ssl.truststore.type"] == "PEM"
    assert props["listener.name.client.ssl.truststore.location"] == str(tmp_path / "ca.pem")
    assert props["listener.name.client.ssl.client.auth"] == "required"
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.client.scram-sha-512.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    assert not [key for key in props if "password" in key]


def test_each_protocol_gets_only_its_own_listener_settings(tmp_path: Path) -> None:
    tls_only = ClientListener(port=1, protocol="SSL", keystore=tmp_path / "ks.pem").properties()
    assert tls_only["listener.name.client.ssl.client.auth"] == "none"
    assert not [key for key in tls_only if "sasl" in key or "truststore" in key]
    sasl_only = ClientListener(port=1, protocol="SASL_PLAINTEXT").properties()
    assert sorted(sasl_only) == ["listener.name.client.sasl.enabled.mechanisms",
                                 "listener.name.client.scram-sha-512.sasl.jaas.config"]


@pytest.mark.parametrize(("tls", "sasl", "protocol"), [(False, False, "PLAINTEXT"), (True, False, "SSL"),
                                                       (False, True, "SASL_PLAINTEXT"), (True, True, "SASL_SSL")])
def test_the_listener_protocol_follows_tls_and_sasl(tls: bool, sasl: bool, protocol: str, tmp_path: Path) -> None:
    assert listener_protocol(tls=tls, sasl=sasl) == protocol
    server_tls = ServerTls(tmp_path / "s.crt", tmp_path / "s.key") if tls else None
    kafka = ApacheKafka(tls=server_tls, scram_users={"alice": "pw"} if sasl else None)
    assert kafka.security_protocol == protocol
    assert kafka.scram_user_names == (("alice",) if sasl else ())


def test_listeners_that_cannot_work_are_refused_when_described(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs keystore"):
        ClientListener(port=1, protocol="SASL_SSL")
    with pytest.raises(ValueError, match="takes no keystore"):
        ClientListener(port=1, protocol="SASL_PLAINTEXT", keystore=tmp_path / "ks.pem")
    with pytest.raises(ValueError, match="needs TLS and a truststore"):
        ClientListener(port=1, protocol="SSL", keystore=tmp_path / "ks.pem", client_auth="required")
    with pytest.raises(ValueError, match="needs ca_file"):
        ServerTls(tmp_path / "s.crt", tmp_path / "s.key", client_auth="required")


def hi(password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802's Hi() with HMAC-SHA-512, written out: what Kafka's ScramFormatter computes."""
    import hashlib
    import hmac

    u = hmac.new(password, salt + b"\x00\x00\x00\x01", hashlib.sha512).digest()
    out = u
    for _ in range(iterations - 1):
        u = hmac.new(password, u, hashlib.sha512).digest()
        out = bytes(a ^ b for a, b in zip(out, u, strict=True))
    return out


def test_scram_users_are_formatted_with_a_salted_password_never_the_password() -> None:
    salt = bytes(range(32))
    arg = scram_argument("alice", "alice-secret", salt=salt)
    match = re.fullmatch(r'SCRAM-SHA-512=\[name="alice",salt="([^"]+)",saltedpassword="([^"]+)",iterations=4096\]',
                         arg)
    assert match, arg
    assert base64.b64decode(match[1]) == salt
    assert base64.b64decode(match[2]) == hi(b"alice-secret", salt, 4096)
    assert "alice-secret" not in arg
    assert scram_argument("alice", "alice-secret") != scram_argument("alice", "alice-secret")  # a fresh salt each


@pytest.mark.parametrize(("name", "password", "message"), [
    ("a,b", "pw", "without commas"), ("", "pw", "non-empty name"), ("alice", "", "non-empty password"),
])
def test_scram_users_kafka_cannot_store_are_refused_without_showing_the_password(
        name: str, password: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        ApacheKafka(scram_users={name: password})
    assert password == "" or password not in str(err.value)
    with pytest.raises(ValueError, match="at least 4096"):
        scram_argument("alice", "pw", iterations=1000)


def test_the_format_command_carries_the_scram_users_but_not_their_passwords(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = tmp_path / "format-args"
    home, jdk = fake_install(tmp_path, "echo '[x] ERROR stop here (kafka.Kafka)'; exit 1")
    java = jdk / "bin" / "java"
    java.write_text(java.read_text().replace('*StorageTool*) ', f'*StorageTool*) echo "$@" > {args}; '))
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    kafka = ApacheKafka(home=home, scram_users={"alice": "alice-secret", "bob": "bob-secret"},
                        log_file=tmp_path / "kafka.log")
    with pytest.raises(BrokerError, match="exited at start"):
        kafka.start(timeout_s=10)
    text = args.read_text()
    assert text.count("--add-scram SCRAM-SHA-512=[name=") == 2 and "alice" in text and "bob" in text
    assert "secret" not in text and "secret" not in (tmp_path / "kafka.log").read_text()
