"""TLS with client certificates (mTLS) through a real TLS terminator (stunnel) in front of the embedded broker.

The embedded broker speaks no TLS. stunnel accepts TLS on one port and
forwards to the broker, which advertises that TLS port, so every connection
of both client stacks — librdkafka for the score path, aiokafka for Faust's
drift agent — goes through TLS with verification on, and presents a client
certificate the terminator checks.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.kafka.broker import EmbeddedBroker, free_port
from driftline.streams.kafka.topics import ensure_topics
from driftline.streams.settings import KafkaSecurity, load_settings
from tests.certs import make_ca, sign
from tests.helpers import WorkerProcess, score_end_to_end

pytestmark = pytest.mark.kafka
KEY_PASSWORD = "s3cret-key-pass-7f"  # noqa: S105 - test secret that must never show up in logs or /metrics


@pytest.fixture
def tls_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    assert exe, "stunnel is needed for this test (Debian's stunnel4; make test installs it)"
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    server_crt, server_key = sign(d, "ca", "server", "IP:127.0.0.1")
    client_crt, client_key = sign(d, "ca", "client", None, key_password=KEY_PASSWORD)
    plain, tls = free_port(), free_port()
    conf = d / "stunnel.conf"
    conf.write_text(f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n"
                    f"cert = {server_crt}\nkey = {server_key}\nCAfile = {ca}\nverify = 2\n")
    stunnel = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "stunnel.log").open("wb"))
    broker = EmbeddedBroker(port=plain, advertised_port=tls)
    broker.start()
    try:
        yield {"bootstrap": f"127.0.0.1:{tls}", "ca": ca, "other_ca": other, "cert": client_crt, "key": client_key}
    finally:
        broker.stop()
        stunnel.terminate()
        stunnel.wait(10)


def test_worker_over_mtls_with_verification_and_refusal_of_an_unknown_ca(
    tls_broker: dict, tmp_path: Path, namespace: str, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    security = {"kafka__security_protocol": "SSL", "kafka__ssl_ca_file": str(tls_broker["ca"]),
                "kafka__ssl_cert_file": str(tls_broker["cert"]), "kafka__ssl_key_file": str(tls_broker["key"]),
                "kafka__ssl_key_password": KEY_PASSWORD}
    kafka = KafkaSecurity(security_protocol="SSL", ssl_ca_file=tls_broker["ca"], ssl_cert_file=tls_broker["cert"],
                          ssl_key_file=tls_broker["key"], ssl_key_password=KEY_PASSWORD)  # type: ignore[arg-type]
    settings = load_settings(broker=tls_broker["bootstrap"], namespace=namespace, kafka=kafka)
    ensure_topics(settings)
    worker = WorkerProcess(tls_broker["bootstrap"], namespace, tmp_path, window_events="500", window_grace_s="0",
                           **security).start()
    try:
        # the score path (librdkafka) and the drift agent (Faust/aiokafka), both over TLS
        score_end_to_end(worker, settings, catalog, generator, rng, 1500)
        metrics = worker.metrics()
    finally:
        worker.stop()
    assert KEY_PASSWORD not in worker.log() and KEY_PASSWORD not in metrics

    # The same worker trusting another CA refuses the server: it stops at start and says why, at once
    # (a certificate that does not verify will not verify by waiting: broker_wait_s is not spent on it).
    refused = WorkerProcess(tls_broker["bootstrap"], namespace, tmp_path, broker_wait_s="600",
                            **{**security, "kafka__ssl_ca_file": str(tls_broker["other_ca"])}).start()
    assert refused.proc is not None
    code = refused.proc.wait(timeout=90)
    assert code != 0
    log = refused.log()
    assert "certificate verify failed" in log and "cannot reach the broker" in log
    assert KEY_PASSWORD not in log
