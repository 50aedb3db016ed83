"""TLS with client certificates (mTLS) through a real TLS terminator (stunnel) in front of the embedded broker.

The embedded broker speaks no TLS. stunnel accepts TLS on one port and
forwards to the broker, which advertises that TLS port, so every connection
of both client stacks — librdkafka for the score path, aiokafka for Faust's
drift agent — goes through TLS with verification on, and presents a client
certificate the terminator checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode_many
from driftline.streams.kafka.broker import EmbeddedBroker, free_port
from driftline.streams.kafka.topics import ensure_topics, latest_by_key
from driftline.streams.settings import KafkaSecurity, load_settings
from tests.helpers import WorkerProcess

pytestmark = pytest.mark.kafka
KEY_PASSWORD = "s3cret-key-pass-7f"  # noqa: S105 - test secret that must never show up in logs or /metrics


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)  # noqa: S607
    assert done.returncode == 0, done.stderr


def make_ca(d: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-subj", f"/CN={name}", "-days", "2", cwd=d)
    return d / f"{name}.crt"


def sign(d: Path, ca: str, name: str, san: str | None, key_password: str | None = None) -> tuple[Path, Path]:
    key_args = ["-passout", f"pass:{key_password}"] if key_password else ["-nodes"]
    openssl("req", "-newkey", "rsa:2048", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name, cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


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
    conf = settings.confluent()
    ensure_topics(settings)
    worker = WorkerProcess(tls_broker["bootstrap"], namespace, tmp_path, window_events="500", window_grace_s="0",
                           **security).start()
    try:
        recs, _ = generator.generate(1500, rng, start_ms=int(time.time() * 1000), step_ms=0)
        recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
        producer = Producer({**conf, "linger.ms": 5})
        for r, v in zip(recs, encode_many(catalog.latest("driftline.examples.CardTransaction"), recs), strict=True):
            producer.produce(settings.topic("requests"), v, r["card_id"].encode())
        assert producer.flush(30) == 0
        consumer = Consumer({**conf, "group.id": "tls-check", "enable.auto.commit": False})
        consumer.assign([TopicPartition(settings.topic("predictions"), p, 0) for p in range(4)])
        got, deadline = 0, time.monotonic() + 90
        while got < len(recs):  # the score path (librdkafka) over TLS
            assert worker.alive() and time.monotonic() < deadline, worker.log()[-3000:]
            got += sum(1 for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        consumer.close()
        def windows_closed() -> int:
            state = latest_by_key(conf, settings.topic("drift-state")).get(b"fraud")
            return 0 if state is None else int(json.loads(state)["policy"]["window_index"])

        deadline = time.monotonic() + 60
        while windows_closed() < 1:  # the drift agent (Faust/aiokafka) consumed sketches and wrote state over TLS
            assert worker.alive() and time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.5)
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
