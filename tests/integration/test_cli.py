"""The ``driftline`` command as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.streams.kafka.broker import Broker, EmbeddedBroker
from driftline.streams.settings import REPO_ROOT

pytestmark = pytest.mark.kafka


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.streams.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def test_topics_produce_and_tail(broker: Broker, namespace: str, tmp_path: Path, generator, rng) -> None:  # type: ignore[no-untyped-def]
    env = {"DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": namespace}
    created = run("topics", "create", env=env)
    assert created.returncode == 0, created.stderr
    assert f"{namespace}.requests\t4 partitions\tcreated" in created.stdout
    assert "exists" in run("topics", "create", env=env).stdout

    records, _ = generator.generate(5, rng)
    lines = [json.dumps(r) for r in records] + ['{"request_id": "oops"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = run("produce", str(tmp_path / "in.jsonl"), env=env)
    assert out.returncode == 1  # one line was rejected, and said so
    assert "produced 5 records" in out.stdout and "1 lines rejected" in out.stdout
    assert "in.jsonl:6:" in out.stderr

    csv_rows = ["request_id,event_time,card_id,amount", "csv-1,1767225600000,card-1,12.5"]
    (tmp_path / "in.csv").write_text("\n".join(csv_rows) + "\n")
    assert run("produce", str(tmp_path / "in.csv"), env=env).returncode == 1  # missing fields: rejected

    tail = run("tail", f"{namespace}.requests", "--from-beginning", "--max", "3", env=env, timeout=60)
    assert tail.returncode == 0, tail.stderr
    shown = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(shown) == 3
    ids = {r["request_id"] for r in records}
    for item in shown:
        assert item["schema"].startswith("driftline.examples.CardTransaction v2")
        assert item["value"]["request_id"] in ids
        assert item["value"]["event_time"].endswith("+00:00")  # timestamps are readable


@pytest.mark.parametrize("kind", [pytest.param("embedded", id="tansu"), pytest.param("kafka", id="kafka")])
def test_up_shows_predictions_and_dead_letters_and_ends_with_counts(tmp_path: Path, kind: str) -> None:
    out = run("up", "--broker-kind", kind, "--duration", "15", "--rate", "500",
              env={"DRIFTLINE_DATA_DIR": str(tmp_path)}, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    counts = json.loads(lines[-1])
    assert counts["driftline.requests"] > 6000
    assert counts["driftline.predictions"] > 0 and counts["driftline.deadletter"] > 0
    assert counts["driftline.requests"] == counts["driftline.predictions"] + counts["driftline.deadletter"]
    first = re.search(r"first prediction ([\d.]+)s after start", out.stdout)
    assert first is not None and float(first.group(1)) <= 15.0
    assert "dead letters" in out.stdout and "p99" in out.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ ", out.stdout)


def test_tail_stops_with_a_message_when_the_broker_goes(tmp_path: Path) -> None:
    own = EmbeddedBroker()
    own.start()
    env = {**os.environ, "DRIFTLINE_BROKER": own.bootstrap, "DRIFTLINE_NAMESPACE": "gone"}
    try:
        assert run("topics", "create", env=env).returncode == 0
        tail = subprocess.Popen([sys.executable, "-m", "driftline.streams.cli", "tail", "gone.predictions"],
                                cwd=REPO_ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert tail.stderr is not None
        first = tail.stderr.readline()  # blocks until tail follows the topic (or dies)
        assert first.startswith("following gone.predictions"), first
    finally:
        own.stop()
    try:
        _, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 1
    assert "lost the broker" in err
