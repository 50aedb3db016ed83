"""What the worker says when the broker, or librdkafka itself, refuses its security settings: one line, at once.

The classification of librdkafka's errors (which refusals waiting cannot
cure) and a client librdkafka refuses to make; the refusals from a real
broker are in tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from driftline.streams.errors import ConfigError
from driftline.streams.kafka.broker import free_port
from driftline.streams.kafka.topics import CHECK_CLIENT_CERT, CHECK_SASL, CHECK_TLS, refusal_fix, wait_for_broker
from tests.certs import make_ca, sign

# librdkafka's own texts, as a Kafka 4 broker made them (tests/integration/test_kafka_security.py)
UNKNOWN_CA = ("ssl://127.0.0.1:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify "
              "failed: broker certificate could not be verified (after 13ms in state SSL_HANDSHAKE)")
BAD_PASSWORD = ("sasl_ssl://127.0.0.1:1/bootstrap: SASL authentication error: Authentication failed during "
                "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 314ms in state "
                "AUTH_REQ)")
NO_CLIENT_CERT = ("ssl://127.0.0.1:1/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad "
                  "certificate: SSL alert number 42 (after 1ms in state APIVERSION_QUERY)")


@pytest.mark.parametrize(("code", "text", "fix"), [
    (KafkaError._SSL, UNKNOWN_CA, CHECK_TLS),
    (KafkaError._AUTHENTICATION, BAD_PASSWORD, CHECK_SASL),
    (KafkaError.SASL_AUTHENTICATION_FAILED, "Authentication failed", CHECK_SASL),
    (KafkaError._TRANSPORT, NO_CLIENT_CERT, CHECK_CLIENT_CERT),
    (KafkaError._TRANSPORT, NO_CLIENT_CERT.replace("number 42", "number 116"), CHECK_CLIENT_CERT),
])
def test_refusals_that_waiting_cannot_cure_say_what_to_check(code: int, text: str, fix: str) -> None:
    assert refusal_fix(KafkaError(code, text)) == fix


@pytest.mark.parametrize(("code", "text"), [
    (KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"),
    (KafkaError._TRANSPORT, "ssl://127.0.0.1:1/1: Disconnected: SSL connection closed by peer (after 112ms)"),
    (KafkaError._TRANSPORT, "Receive failed: SSL alert number 80"),  # the broker's internal error: may pass
    (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"),
    (KafkaError._TIMED_OUT, "Failed to get metadata: Local: Timed out"),
])
def test_a_broker_that_is_down_or_restarting_is_waited_for(code: int, text: str) -> None:
    assert refusal_fix(KafkaError(code, text)) is None


def test_a_key_its_password_does_not_decrypt_is_a_config_error_at_once(tmp_path: Path) -> None:
    make_ca(tmp_path, "ca")
    cert, key = sign(tmp_path, "ca", "client", None, key_password="right-pass-1")  # noqa: S106 - a test key
    conf = {"bootstrap.servers": f"127.0.0.1:{free_port()}", "security.protocol": "SSL",
            "ssl.ca.location": str(tmp_path / "ca.crt"), "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key), "ssl.key.password": "wrong-pass-2"}
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        wait_for_broker(conf, 600)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "\n" not in message and "ssl.key.location" in message, message
    assert "DRIFTLINE_KAFKA__SSL_KEY_FILE and DRIFTLINE_KAFKA__SSL_KEY_PASSWORD" in message, message
    assert "pass-" not in message
