"""The ``driftline`` command against a real broker where something is off, and its machine-readable output.

A namespace without topics, input lines that do not parse, a broker that
goes away under a worker (how much it logs, how fast SIGTERM stops it), and
``--json``/``NO_COLOR``/time order of ``driftline alerts``. The cases
without a broker are in tests/unit/test_cli_errors.py.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.events import encode_event, point_alert, retrain_request
from driftline.streams.kafka.broker import Broker, EmbeddedBroker
from driftline.streams.settings import REPO_ROOT, load_settings
from tests.helpers import WorkerProcess

pytestmark = pytest.mark.kafka
# What a command says is the command's, not the broker's: the embedded broker only
# (both brokers passed when this was written; the suite's time is better spent elsewhere).
ONE_BROKER = pytest.mark.parametrize("broker", ["tansu"], indirect=True)


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.streams.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("args", [["alerts"], ["alerts", "--follow"], ["status"], ["report"]], ids=" ".join)
@ONE_BROKER
def test_a_namespace_without_topics_says_run_topics_create(broker: Broker, namespace: str, args: list[str]) -> None:
    """Before: `alerts` waited for ever, `status` said "no fetch answer", `report` printed a traceback."""
    started = time.monotonic()
    done = run(*args, env={"DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}, timeout=60)
    assert done.returncode == 1
    line = one_line(done)
    assert f"topic {namespace}." in line and "does not exist" in line and "driftline topics create" in line, line
    assert time.monotonic() - started < 30


@ONE_BROKER
def test_produce_names_the_line_the_column_and_a_short_row(broker: Broker, namespace: str, tmp_path: Path,
                                                          generator, rng) -> None:  # type: ignore[no-untyped-def]
    env = {"DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}
    assert run("topics", "create", env=env).returncode == 0
    records, _ = generator.generate(3, rng)
    lines = [json.dumps(records[0]), '{"request_id": "x", oops}', json.dumps(records[1]),
             json.dumps({**records[2], "amount": "lots"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = run("produce", str(tmp_path / "in.jsonl"), env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]  # before: a traceback
    assert "produced 2 records" in out.stdout and "2 lines rejected" in out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith(str(tmp_path))]
    assert len(errors) == 2, out.stderr
    assert errors[0].startswith(f"{tmp_path / 'in.jsonl'}:2: ") and "not JSON" in errors[0]
    assert errors[1].startswith(f"{tmp_path / 'in.jsonl'}:4: ") and "column amount: 'lots'" in errors[1]

    fields = list(records[0])
    full = [str(records[0][f]) if records[0][f] is not None else "" for f in fields]
    short = [v for f, v in zip(fields, full, strict=True) if f != "card_id"]  # one field left out: the rest shift
    (tmp_path / "in.csv").write_text("\n".join([",".join(fields), ",".join(full), ",".join(short)]) + "\n")
    out = run("produce", str(tmp_path / "in.csv"), env=env)
    assert out.returncode == 1 and "produced 1 records" in out.stdout and "1 lines rejected" in out.stdout
    (error,) = [line for line in out.stderr.splitlines() if line.startswith(str(tmp_path))]
    assert "in.csv:3: " in error and f"the row has {len(fields) - 1} fields where the header has {len(fields)}" \
        in error, error  # before: "could not convert string to float" about a shifted column


def put_events(settings, catalog: SchemaCatalog) -> list[str]:  # type: ignore[no-untyped-def]
    """Two alerts and a retrain event, written out of time order across the two topics; their ids in time order."""
    first = point_alert("fraud", "1", "performance_drop", "accuracy", 0.7, 0.8, "first", 1_767_225_601_000)
    third = point_alert("fraud", "1", "load_failed", "load", 1, 0, "third", 1_767_225_603_000)
    second = retrain_request("fraud", "1", "second", (first.id,), 0, 1, 1_767_225_602_000, cause=("t",))
    producer = Producer(settings.confluent(log_level=0))
    producer.produce(settings.topic("alerts"), encode_event(catalog, third))
    producer.produce(settings.topic("alerts"), encode_event(catalog, first))
    producer.produce(settings.topic("retrain"), encode_event(catalog, second))
    assert producer.flush(30) == 0
    return [first.id, second.id, third.id]


@ONE_BROKER
def test_alerts_in_time_order_as_json_and_without_colour(broker: Broker, namespace: str,
                                                         catalog: SchemaCatalog) -> None:
    env = {"DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}
    assert run("topics", "create", env=env).returncode == 0
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ids = put_events(settings, catalog)

    text = run("alerts", env=env, timeout=60)
    assert text.returncode == 0, text.stderr
    order = [next(word for word in ("first", "second", "third") if word in line) for line in text.stdout.splitlines()]
    assert order == ["first", "second", "third"], text.stdout  # before: the alerts topic, then the retrain topic

    js = run("alerts", "--json", env=env, timeout=60)
    assert js.returncode == 0, js.stderr
    events = [json.loads(line) for line in js.stdout.splitlines()]
    assert [e["id"] for e in events] == ids
    assert [e["event"] for e in events] == ["alert", "retrain", "alert"]
    assert events[0]["topic"] == settings.topic("alerts") and events[1]["topic"] == settings.topic("retrain")

    def on_a_terminal(extra: dict[str, str]) -> str:
        """`driftline alerts` with its stdout on a pseudo-terminal (where it colours), as a person runs it."""
        main, child = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "driftline.streams.cli", "alerts"], cwd=REPO_ROOT,
                                env={**os.environ, **env, **extra}, stdout=child, stderr=subprocess.PIPE)
        os.close(child)
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        os.close(main)
        assert proc.wait(timeout=30) == 0
        return out.decode()

    coloured = on_a_terminal({})
    assert "\x1b[" in coloured and "third" in coloured
    plain = on_a_terminal({"NO_COLOR": "1"})
    assert "\x1b[" not in plain and "third" in plain


@ONE_BROKER
def test_status_and_model_list_as_json(broker: Broker, namespace: str, catalog: SchemaCatalog) -> None:
    env = {"DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}
    assert run("topics", "create", env=env).returncode == 0
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    put_events(settings, catalog)
    status = run("status", "--json", "--worker", "http://127.0.0.1:1", env=env, timeout=90)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    topics = {t["topic"]: t for t in data["topics"]}
    assert topics[f"{namespace}.requests"]["partitions"] == 4 and topics[f"{namespace}.requests"]["lag"] == 0
    assert topics[f"{namespace}.alerts"]["records"] == 2 and topics[f"{namespace}.alerts"]["lag"] is None
    # each topic's size and retention: the two alerts' bytes exactly; retention as created (state: compacted)
    alert_bytes = sum(len(encode_event(catalog, a)) for a in (
        point_alert("fraud", "1", "performance_drop", "accuracy", 0.7, 0.8, "first", 1_767_225_601_000),
        point_alert("fraud", "1", "load_failed", "load", 1, 0, "third", 1_767_225_603_000)))
    assert topics[f"{namespace}.alerts"]["bytes"] == alert_bytes and topics[f"{namespace}.requests"]["bytes"] == 0
    assert {t: topics[f"{namespace}.{t}"]["retention"] for t in ("requests", "predictions", "deadletter", "models")} \
        == {"requests": "1d", "predictions": "7d", "deadletter": "14d", "models": "compacted"}
    shown = run("status", "--worker", "http://127.0.0.1:1", env=env, timeout=90).stdout
    assert re.search(rf"{namespace}\.alerts +1 +2 +- +{alert_bytes} B +90d", shown), shown
    assert [m["model"] for m in data["models"]] == ["fraud"] and data["models"][0]["source"] == "settings"
    assert [a["message"] for a in data["alerts"]] == ["first", "third"]
    assert data["worker"]["error"] and data["worker"]["models"] == []

    listed = run("model", "list", "--json", env=env, timeout=90)
    assert listed.returncode == 0, listed.stderr
    versions = json.loads(listed.stdout)["versions"]
    assert {(v["model"], v["version"]) for v in versions} >= {("fraud", "1")}
    champion = next(v for v in versions if v["live"])
    assert champion["live"] == ["champion"] and len(champion["sha256"]) == 64


def test_a_worker_whose_broker_goes_away_logs_little_and_stops_in_time(tmp_path: Path, namespace: str) -> None:
    """Before: ~100 lines a second while the broker was away (aiokafka and librdkafka retrying each connection)."""
    own = EmbeddedBroker(log_file=tmp_path / "broker.log")
    own.start()
    worker = WorkerProcess(own.bootstrap, namespace, tmp_path).start()
    try:
        worker.wait_log(r"assigned 4 partitions", timeout_s=90)
        before = len(worker.log().splitlines())
        own.stop()
        away = time.monotonic()
        time.sleep(30)  # the outage itself: the lines logged during it are what is measured
        logged = worker.log().splitlines()[before:]
        assert worker.alive(), worker.log()[-3000:]
        assert len(logged) < 60, "\n".join(logged[-60:])
        assert time.monotonic() - away >= 30
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        code = worker.proc.wait(timeout=60)
        took = time.monotonic() - stopping
        assert took < 40, f"SIGTERM took {took:.0f}s with the broker away (Kubernetes kills at 40 s)"
        assert code == 0
    finally:
        if worker.alive():
            worker.kill()
        own.stop()
