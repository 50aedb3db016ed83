"""``driftline worker --processes 2``: two members share the partitions; when one dies the other takes over."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import pytest

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics, iter_topic
from driftline.streams.settings import load_settings
from tests.helpers import Collector, WorkerProcess
from tests.integration.test_rollout import Load

pytestmark = pytest.mark.kafka


def two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def test_two_processes_share_partitions_and_one_takes_over_when_the_other_dies(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    sup = WorkerProcess(broker.bootstrap, namespace, tmp_path, args=("--processes", "2", "--restart-delay", "0"),
                        port=two_free_ports(), batch_max="200").start()
    pred_t = settings.topic("predictions")
    collector = Collector(broker.bootstrap, {pred_t: 4})

    wait_log = sup.wait_log
    try:
        pid0 = int(wait_log(r"started score process 0 \(pid (\d+)").group(1))
        pid1 = int(wait_log(r"started score process 1 \(pid (\d+)").group(1))
        wait_log(rf"\[{pid0}\] \[INFO\] assigned 2 partitions")  # Faust's log format names the pid
        wait_log(rf"\[{pid1}\] \[INFO\] assigned 2 partitions")  # the four partitions shared
        with Load(broker.bootstrap, settings.topic("requests"), catalog, generator, rate=1000) as load:
            collector.until(lambda r: len(r[pred_t]) >= 3000, timeout_s=60)
            os.kill(pid0, signal.SIGKILL)
            wait_log(rf"\[{pid1}\] \[INFO\] assigned 4 partitions")  # took over
            done = len(collector.records[pred_t])
            collector.until(lambda r: len(r[pred_t]) >= done + 3000, timeout_s=60)  # w1 alone keeps going
        wanted = set(load.sent)
        seen: set[str] = set()

        def covered(r: dict) -> bool:
            seen.update(decode(catalog, m.value())[1]["request_id"] for m in r[pred_t][len(seen_msgs):])
            seen_msgs.extend(r[pred_t][len(seen_msgs):])
            return seen >= wanted

        seen_msgs: list = []
        try:
            collector.until(covered, timeout_s=180)
        except AssertionError as exc:
            missing = sorted(wanted - seen)
            raise AssertionError(f"{len(missing)} of {len(wanted)} requests unanswered, e.g. {missing[:3]}; "
                                 f"{sup.log()[-2000:]}") from exc
    finally:
        collector.close()
        sup.stop()
    assert re.search(r"score process 0 \(pid \d+\) exited with -9; not restarting", sup.log())
    final = {decode(catalog, m.value())[1]["request_id"] for m in iter_topic(settings.confluent(), pred_t)}
    assert final == wanted  # nothing lost (at least once: a few may have been scored twice)
