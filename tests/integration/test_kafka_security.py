"""Apache Kafka's own TLS: mutual TLS, and SASL_SSL with SCRAM-SHA-512, for both client stacks of the worker.

Two local Kafkas (one per fixture, each reused by several tests) whose
clients' listener is secured: one asks for a client certificate from the
test's CA (mTLS), the other for a SCRAM-SHA-512 user stored when its log
folder was formatted, over TLS. A worker — the score path on librdkafka, the
drift agent on Faust/aiokafka — scores requests and closes a drift window
through each; a wrong password, a CA that did not sign the broker's
certificate, a missing client certificate and a key password that does not
decrypt the key each stop it at start with one line saying what to check, at
once; and no secret reaches a log or /metrics.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.errors import BrokerError
from driftline.streams.kafka.apache import ApacheKafka, ServerTls
from driftline.streams.kafka.topics import ensure_topics, wait_for_broker
from driftline.streams.settings import KafkaSecurity, Settings, load_settings
from tests.certs import make_ca, sign
from tests.helpers import WorkerProcess, score_end_to_end

pytestmark = pytest.mark.kafka
KEY_PASSWORD = "k3y-pass-3c1d"  # the client key's: must never show up in a log or /metrics
SASL_USER = "scorer"
SASL_PASSWORD = "sc4am-pass-8e2f"  # ditto
WRONG_PASSWORD = "not-the-pass-51"
SECRETS = (KEY_PASSWORD, SASL_PASSWORD, WRONG_PASSWORD)
REQUESTS = 1000
STOPS_WITHIN_S = 30  # a worker refused at start, Python imports included; broker_wait_s is 600


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # signed nothing the brokers present
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "ca"), make_ca(d, "other-ca")
    server_cert, server_key = sign(d, "ca", "server", "IP:127.0.0.1")
    client_cert, client_key = sign(d, "ca", "client", None, key_password=KEY_PASSWORD)
    return Pki(ca, other, server_cert, server_key, client_cert, client_key)


@pytest.fixture(scope="module")
def mtls_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    """Clients need a certificate signed by the test's CA."""
    tls = ServerTls(pki.server_cert, pki.server_key, ca_file=pki.ca, client_auth="required")
    with ApacheKafka(tls=tls, log_file=tmp_path_factory.mktemp("kafka-mtls") / "kafka.log") as kafka:
        yield kafka


@pytest.fixture(scope="module")
def scram_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    """Clients need SCRAM-SHA-512 credentials, over TLS (no client certificate)."""
    with ApacheKafka(tls=ServerTls(pki.server_cert, pki.server_key), scram_users={SASL_USER: SASL_PASSWORD},
                     log_file=tmp_path_factory.mktemp("kafka-scram") / "kafka.log") as kafka:
        yield kafka


def mtls_env(pki: Pki, **change: str) -> dict[str, str]:
    """The worker's DRIFTLINE_KAFKA__* variables for the mTLS broker (lower case, as WorkerProcess takes them)."""
    return {"kafka__security_protocol": "SSL", "kafka__ssl_ca_file": str(pki.ca),
            "kafka__ssl_cert_file": str(pki.client_cert), "kafka__ssl_key_file": str(pki.client_key),
            "kafka__ssl_key_password": KEY_PASSWORD, **change}


def scram_env(pki: Pki, **change: str) -> dict[str, str]:
    return {"kafka__security_protocol": "SASL_SSL", "kafka__sasl_mechanism": "SCRAM-SHA-512",
            "kafka__sasl_username": SASL_USER, "kafka__sasl_password": SASL_PASSWORD,
            "kafka__ssl_ca_file": str(pki.ca), **change}


def settings_of(kafka: ApacheKafka, namespace: str, env: dict[str, str]) -> Settings:
    """The same settings the worker gets from ``env``, for the test's own clients."""
    security = KafkaSecurity(**{k.removeprefix("kafka__"): v for k, v in env.items()})
    return load_settings(broker=kafka.bootstrap, namespace=namespace, kafka=security)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret ({secret[:3]}...) was written out"


def scores_and_drifts(kafka: ApacheKafka, env: dict[str, str], tmp_path: Path, namespace: str,
                      catalog: SchemaCatalog, generator: Any, rng: Any) -> None:
    settings = settings_of(kafka, namespace, env)
    ensure_topics(settings)
    worker = WorkerProcess(kafka.bootstrap, namespace, tmp_path, window_events="500", window_grace_s="0",
                           **env).start()
    try:
        score_end_to_end(worker, settings, catalog, generator, rng, REQUESTS)
        metrics = worker.metrics()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert_no_secret(worker.log(), metrics)
    assert kafka.log_file is not None
    assert_no_secret(kafka.log_file.read_text(errors="replace"))


def refused_at_start(kafka: ApacheKafka, env: dict[str, str], tmp_path: Path, namespace: str) -> tuple[int, str]:
    """A worker that the broker refuses: its exit code and its last line, once it stopped (within a bound)."""
    worker = WorkerProcess(kafka.bootstrap, namespace, tmp_path, broker_wait_s="600", **env)
    started = time.monotonic()
    worker.start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=STOPS_WITHIN_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail(f"still running after {STOPS_WITHIN_S}s (broker_wait_s spent on a refusal?): "
                    f"{worker.log()[-2000:]}")
    took = time.monotonic() - started
    log = worker.log()
    assert "Traceback" not in log, log[-3000:]
    assert_no_secret(log)
    lines = log.strip().splitlines()
    assert lines, "stopped without a word"
    assert took < STOPS_WITHIN_S
    return code, lines[-1]


def test_the_worker_scores_and_drifts_over_mutual_tls(
    mtls_kafka: ApacheKafka, pki: Pki, tmp_path: Path, namespace: str, catalog: SchemaCatalog, generator: Any,
    rng: Any,
) -> None:
    assert mtls_kafka.security_protocol == "SSL"
    scores_and_drifts(mtls_kafka, mtls_env(pki), tmp_path, namespace, catalog, generator, rng)


def test_the_worker_scores_and_drifts_over_sasl_ssl_with_scram_sha_512(
    scram_kafka: ApacheKafka, pki: Pki, tmp_path: Path, namespace: str, catalog: SchemaCatalog, generator: Any,
    rng: Any,
) -> None:
    assert scram_kafka.security_protocol == "SASL_SSL" and scram_kafka.scram_user_names == (SASL_USER,)
    scores_and_drifts(scram_kafka, scram_env(pki), tmp_path, namespace, catalog, generator, rng)


def test_a_wrong_password_stops_the_worker_at_start_with_one_line(
    scram_kafka: ApacheKafka, pki: Pki, tmp_path: Path, namespace: str
) -> None:
    code, last = refused_at_start(scram_kafka, scram_env(pki, kafka__sasl_password=WRONG_PASSWORD), tmp_path,
                                  namespace)
    assert code == 1
    assert last.startswith(f"driftline: cannot reach the broker at {scram_kafka.bootstrap} "), last
    assert "Authentication failed" in last and "invalid credentials" in last and "SCRAM-SHA-512" in last, last
    assert "_SASL_PASSWORD" in last and "BROKER_WAIT_S" not in last, last  # what to fix; waiting will not


def test_an_unknown_ca_stops_the_worker_at_start_with_one_line(
    mtls_kafka: ApacheKafka, pki: Pki, tmp_path: Path, namespace: str
) -> None:
    code, last = refused_at_start(mtls_kafka, mtls_env(pki, kafka__ssl_ca_file=str(pki.other_ca)), tmp_path,
                                  namespace)
    assert code == 1
    assert last.startswith(f"driftline: cannot reach the broker at {mtls_kafka.bootstrap} "), last
    assert "certificate verify failed" in last and "DRIFTLINE_KAFKA__SSL_CA_FILE" in last, last


def test_a_key_password_that_does_not_decrypt_the_key_is_a_config_error(
    mtls_kafka: ApacheKafka, pki: Pki, tmp_path: Path, namespace: str
) -> None:
    code, last = refused_at_start(mtls_kafka, mtls_env(pki, kafka__ssl_key_password=WRONG_PASSWORD), tmp_path,
                                  namespace)
    assert code == 2  # a setting to fix, as the other config errors
    assert last.startswith("driftline: the Kafka client refuses its settings"), last
    assert "ssl.key.location" in last and "DRIFTLINE_KAFKA__SSL_KEY_PASSWORD" in last, last


def test_without_a_client_certificate_mutual_tls_refuses_at_once(mtls_kafka: ApacheKafka, pki: Pki) -> None:
    """The broker's refusal arrives as a TLS alert on a transport failure: recognised, not waited on."""
    started = time.monotonic()
    with pytest.raises(BrokerError) as err:
        wait_for_broker({"bootstrap.servers": mtls_kafka.bootstrap, "security.protocol": "SSL",
                         "ssl.ca.location": str(pki.ca)}, 600)
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "bad certificate" in message and "DRIFTLINE_KAFKA__SSL_CERT_FILE" in message, message


def test_the_secured_brokers_refuse_plaintext_clients_and_serve_them_internally(
    mtls_kafka: ApacheKafka, scram_kafka: ApacheKafka
) -> None:
    """The PLAINTEXT listener (readiness, inter-broker) is apart from the secured one clients are told about."""
    from confluent_kafka.admin import AdminClient

    for kafka in (mtls_kafka, scram_kafka):
        assert kafka.internal_bootstrap != kafka.bootstrap
        brokers = AdminClient({"bootstrap.servers": kafka.internal_bootstrap}).list_topics(timeout=10).brokers
        assert [f"{b.host}:{b.port}" for b in brokers.values()] == [kafka.internal_bootstrap]
        with pytest.raises(BrokerError, match="after 1s"):
            wait_for_broker({"bootstrap.servers": kafka.bootstrap}, 1)
