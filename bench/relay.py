"""A bare relay: consume records and produce each one unchanged to another topic (the floor under a worker's two hops).

    python bench/relay.py BOOTSTRAP IN_TOPIC OUT_TOPIC LINGER_MS FETCH_WAIT_MS PARTITIONS

Run by ``bench/e2e.py`` as its own process with the worker's client
settings: the latency of producer → relay → reader is what two broker hops
cost with no work between them. Stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys

from confluent_kafka import Consumer, Producer, TopicPartition


def main() -> None:
    bootstrap, source, sink, linger_ms, fetch_wait_ms, partitions = sys.argv[1:7]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-relay", "fetch.wait.max.ms": int(fetch_wait_ms)})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": int(linger_ms)})
    c.assign([TopicPartition(source, partition, 0) for partition in range(int(partitions))])
    while not stop:
        batch = c.consume(1000, timeout=0) or c.consume(1, timeout=0.1)
        for m in batch:
            if m.error() is None:
                p.produce(sink, m.value(), m.key())
        p.poll(0)
    p.flush(10)
    c.close()


if __name__ == "__main__":
    main()
