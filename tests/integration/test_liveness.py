"""A worker whose score path hangs fails /readyz first, then /healthz once the stall outlasts its bound.

Also: the worker's /metrics carries the process series (RSS, CPU, open files).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode_many
from driftline.streams.core.observe import LIVENESS_STALLS
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics
from driftline.streams.settings import load_settings
from tests.helpers import WorkerProcess, produce

pytestmark = pytest.mark.kafka
# The liveness rule is the worker's, not the broker's: the embedded broker only.
ONE_BROKER = pytest.mark.parametrize("broker", ["tansu"], indirect=True)

STALL_S = 2.0


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@ONE_BROKER
def test_healthz_fails_once_a_stall_outlasts_the_liveness_bound(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng,  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, batch_max="100", stall_s=str(STALL_S),
                           fault_stall_after_batches="3").start()
    base = f"http://127.0.0.1:{worker.port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # up and serving
            assert worker.alive(), worker.log()[-3000:]
            assert time.monotonic() < deadline, worker.log()[-3000:]
            try:
                if get(base + "/healthz")[0] == 200 and get(base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        metrics = worker.metrics()
        rss = next(float(line.split()[1]) for line in metrics.splitlines()
                   if line.startswith("process_resident_memory_bytes "))
        assert rss > 10 * 1024 * 1024 and "\nprocess_cpu_seconds_total " in metrics

        records, _ = generator.generate(2000, rng, start_ms=int(time.time() * 1000), step_ms=0)
        values = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
        produce(broker.bootstrap, settings.topic("requests"),
                [(r["card_id"].encode(), v) for r, v in zip(records, values, strict=True)])
        unready_at = dead_at = None
        started = time.monotonic()
        while dead_at is None:
            assert worker.alive(), worker.log()[-3000:]
            assert time.monotonic() - started < 60 + STALL_S * LIVENESS_STALLS, worker.log()[-3000:]
            if unready_at is None and get(base + "/readyz")[0] == 503:
                unready_at = time.monotonic()
            status, body = get(base + "/healthz")
            if status == 503:
                dead_at = time.monotonic()
                assert body["status"] == "dead" and body["problems"]["progress"].startswith("stalled"), body
                assert "liveness limit" in body["problems"]["progress"]
            time.sleep(0.2)
        assert unready_at is not None and dead_at - unready_at >= STALL_S * (LIVENESS_STALLS - 1) - 1.5
        assert "fault injection: the score agent stalls now" in worker.log()
    finally:
        worker.stop()
