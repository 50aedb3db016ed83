"""The broker missing at start, arriving late, or stopping a while: the worker waits, says why, loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.kafka.broker import EmbeddedBroker, free_port
from driftline.streams.kafka.topics import iter_topic
from driftline.streams.settings import REPO_ROOT, load_settings
from tests.helpers import WorkerProcess, produce, valid_requests

pytestmark = pytest.mark.kafka


def test_no_broker_at_start_is_one_line_after_the_configured_wait(tmp_path: Path) -> None:
    env = {**os.environ, "DRIFTLINE_BROKER": f"127.0.0.1:{free_port()}", "DRIFTLINE_BROKER_WAIT_S": "3",
           "DRIFTLINE_DATA_DIR": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "driftline.streams.cli", "worker"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    waited = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("driftline: cannot reach the broker at 127.0.0.1:") and "after 3s" in last, last
    assert "DRIFTLINE_BROKER" in last and "Traceback" not in done.stderr
    assert waited >= 3, "it gave up before the configured wait"
    assert done.stderr.count("waiting for the broker") >= 2, "no retries with backoff"


def test_a_broker_that_comes_late_and_one_that_stops_for_a_while(tmp_path: Path, namespace: str,
                                                                  catalog: SchemaCatalog, generator) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    worker = WorkerProcess(bootstrap, namespace, tmp_path, broker_wait_s="120", stall_s="2").start()
    broker = EmbeddedBroker(port=port, log_file=tmp_path / "broker.log")
    try:
        worker.wait_log(r"waiting for the broker at")
        broker.start()  # the worker creates its topics and starts
        worker.wait_log(r"assigned 4 partitions", timeout_s=90)
        settings = load_settings(broker=bootstrap, namespace=namespace)
        ids, items = valid_requests(catalog, generator, 2000, seed=3)
        produce(bootstrap, settings.topic("requests"), items[:1000])

        def answered() -> set[str]:
            return {m.key().decode() for m in iter_topic(settings.confluent(), settings.topic("predictions"))}

        deadline = time.monotonic() + 60
        while not answered() >= set(ids[:1000]):
            assert time.monotonic() < deadline and worker.alive(), worker.log()[-3000:]

        assert broker._proc is not None
        broker._proc.send_signal(signal.SIGSTOP)  # the broker stops answering (a long GC pause, a network cut)
        try:
            deadline = time.monotonic() + 30
            while (status := worker.readyz())[0] != 503:
                assert time.monotonic() < deadline, f"/readyz still {status} with the broker gone"
                time.sleep(0.2)
            assert "broker" in status[1]["checks"]["broker"], status
            assert worker.alive() and worker.healthz() == {"status": "alive"}  # waiting is not dying
        finally:
            broker._proc.send_signal(signal.SIGCONT)
        produce(bootstrap, settings.topic("requests"), items[1000:])
        deadline = time.monotonic() + 90
        while not answered() >= set(ids):
            assert time.monotonic() < deadline and worker.alive(), worker.log()[-3000:]
        deadline = time.monotonic() + 30
        while (status := worker.readyz())[0] != 200:
            assert time.monotonic() < deadline, f"/readyz did not recover: {status}"
            time.sleep(0.2)
    finally:
        worker.stop()
        broker.stop()
