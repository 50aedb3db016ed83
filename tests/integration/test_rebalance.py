"""Workers joining and leaving the group while requests flow: nothing is lost, and no false stall afterwards.

Before, batches reached the score agent through a Faust channel that Faust
clears on every rebalance of its own consumer, so a whole batch of one
partition vanished whenever a worker joined or left (scale-out, rolling
update, pod restart), and its offsets were committed past it later.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import load_settings
from tests.helpers import WorkerProcess, produce, valid_requests

pytestmark = pytest.mark.kafka
BACKLOG = 200_000
CYCLES = 3  # a rolling update, a crash, a rolling update
LIVE = 198_000  # sent in 2 × CYCLES equal slices while workers come and go
assert LIVE % (2 * CYCLES) == 0, "every live request must be sent"


@pytest.mark.parametrize("partitions", [1, 4])
def test_workers_joining_and_leaving_lose_nothing(broker: Broker, namespace: str, tmp_path: Path,
                                                  catalog: SchemaCatalog, generator, partitions: int) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(broker=broker.bootstrap, namespace=namespace, partitions={"requests": partitions})
    ensure_topics(settings)
    requests_t, pred_t = settings.topic("requests"), settings.topic("predictions")
    ids, items = valid_requests(catalog, generator, BACKLOG + LIVE, seed=partitions)
    produce(broker.bootstrap, requests_t, items[:BACKLOG])
    env = {"partitions__requests": str(partitions), "stall_s": "3"}
    first = WorkerProcess(broker.bootstrap, namespace, tmp_path, **env).start()
    live = iter(range(BACKLOG, BACKLOG + LIVE, LIVE // (2 * CYCLES)))
    try:
        first.wait_log(r"assigned \d+ partitions")
        for cycle in range(CYCLES):
            second = WorkerProcess(broker.bootstrap, namespace, tmp_path / f"second{cycle}", **env)
            (tmp_path / f"second{cycle}").mkdir()
            second.start()
            second.wait_log(r"consuming .* as group")
            second.wait_log(r"assigned \d+ partitions")
            start = next(live)
            produce(broker.bootstrap, requests_t, items[start:start + LIVE // (2 * CYCLES)])  # traffic meanwhile
            if cycle % 2:
                second.kill()  # a crash
            else:
                assert second.stop() == 0, second.log()[-3000:]  # a rolling update
            start = next(live)
            produce(broker.bootstrap, requests_t, items[start:start + LIVE // (2 * CYCLES)])
            assert first.alive(), first.log()[-3000:]
        wanted = set(ids)
        seen: Counter[bytes] = Counter()
        deadline = time.monotonic() + 300
        while len(seen) < len(wanted):
            assert time.monotonic() < deadline, f"{len(wanted) - len(seen)} of {len(wanted)} requests unanswered"
            assert first.alive(), first.log()[-3000:]
            seen = Counter(m.key() for m in iter_topic(settings.confluent(), pred_t, timeout_s=120))
        lost = wanted - {k.decode() for k in seen}
        duplicates = sum(seen.values()) - len(seen)
        print(f"{partitions} partition(s): {len(wanted)} requests, 0 lost, {duplicates} scored twice")
        assert not lost
        # Idle now: no false "stalled" after the rebalances (per-partition progress starts afresh on assignment).
        quiet_until = time.monotonic() + 3 * 3
        while time.monotonic() < quiet_until:
            status, body = first.readyz()
            assert status == 200, body
            time.sleep(0.5)
    finally:
        first.stop()
