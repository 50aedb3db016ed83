from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from driftline.streams.errors import ConfigError
from driftline.streams.settings import ModelBinding, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_topics() -> None:
    s = load_settings()
    assert s.namespace == "driftline"
    parts = s.topic_partitions()
    assert parts["driftline.requests"] == 4
    assert {"driftline.predictions", "driftline.predictions.shadow", "driftline.deadletter",
            "driftline.sketches", "driftline.alerts", "driftline.retrain", "driftline.feedback",
            "driftline.labeled", "driftline.models"} <= set(parts)


def test_second_model_gets_its_own_topic() -> None:
    s = load_settings(models=[{"name": "fraud"}, {"name": "housing"}])
    assert s.requests_topic(ModelBinding(name="housing")) == "driftline.requests.housing"
    with pytest.raises(ConfigError, match="same requests topic"):
        load_settings(models=[{"name": "a", "topic": "x"}, {"name": "b", "topic": "x"}])


def test_environment_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "driftline.toml"
    config.write_text('namespace = "fromfile"\nbatch_max = 50\n[partitions]\nrequests = 8\n')
    monkeypatch.setenv("DRIFTLINE_CONFIG", str(config))
    monkeypatch.setenv("DRIFTLINE_BATCH_MAX", "77")
    s = load_settings()
    assert (s.namespace, s.batch_max, s.partitions.requests) == ("fromfile", 77, 8)


def test_secrets_are_hidden_and_reach_both_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SASL_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    conf = s.consumer_config()
    assert conf["sasl.password"] == "hunter2" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    from driftline.streams.app.worker import faust_credentials

    creds = faust_credentials(s.kafka)
    assert creds.username == "svc" and creds.password == "hunter2"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DRIFTLINE_BATCH_MAX": "0"}, "DRIFTLINE_BATCH_MAX"),
        ({"DRIFTLINE_NAMESPACE": "bad name!"}, "DRIFTLINE_NAMESPACE"),
        ({"DRIFTLINE_PROVIDERS": "tpu"}, "DRIFTLINE_PROVIDERS"),
        ({"DRIFTLINE_CODEC": "rust"}, "DRIFTLINE_CODEC"),
        ({"DRIFTLINE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "SASL needs"),
        ({"DRIFTLINE_KAFKA__SSL_CA_FILE": "/nonexistent/ca.pem"}, "does not exist"),
    ],
)
def test_bad_setting_exits_2_with_one_line(env: dict[str, str], names: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "driftline.streams.cli", "topics", "create"], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and "fix" in lines[0]


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("batch_maks = 5\n")
    monkeypatch.setenv("DRIFTLINE_CONFIG", str(config))
    with pytest.raises(ConfigError, match="BATCH_MAKS: Extra inputs"):
        load_settings()


def test_exactly_once_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline.streams.kafka.transactions import default_transactional_id

    monkeypatch.setenv("DRIFTLINE_PROCESSING_GUARANTEE", "exactly_once")
    s = load_settings()
    assert s.exactly_once and not load_settings(processing_guarantee="at_least_once").exactly_once
    conf = s.transactional_producer_config("fraud-score-a-0")
    assert conf["transactional.id"] == "fraud-score-a-0" and conf["enable.idempotence"] is True
    assert conf["transaction.timeout.ms"] == int(s.transaction_timeout_s * 1000)
    # Stable across restarts of one worker slot (so a restart fences its crashed self), distinct between slots.
    assert default_transactional_id("ns", "host", "1") == default_transactional_id("ns", "host", "1")
    assert default_transactional_id("ns", "host", "1") != default_transactional_id("ns", "host", None)
    monkeypatch.setenv("DRIFTLINE_PROCESSING_GUARANTEE", "exactly_twice")
    with pytest.raises(ConfigError, match="PROCESSING_GUARANTEE"):
        load_settings()


def test_the_compiled_codec_asked_for_where_it_is_not_built_stops_the_worker() -> None:
    from driftline.streams.app.worker import check_codec

    with pytest.raises(ConfigError, match="DRIFTLINE_CODEC=compiled but the compiled codec is not built"):
        check_codec("compiled", ("numpy",))
    check_codec("compiled", ("compiled", "numpy"))
    check_codec("auto", ("numpy",))  # auto takes what there is
