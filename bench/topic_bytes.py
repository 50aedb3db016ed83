"""What each driftline topic costs: records and bytes per request, and storage per day at a rate.

    python bench/topic_bytes.py [--n 20000] [--rate 1000] [--broker-kind embedded|kafka]

Runs one ``driftline worker`` with the label join on (the example fraud
model, 2 % malformed requests, a label for every request, 60-second drift
windows), sends ``n`` requests and their labels, waits until every label
has joined, then reads every topic to its end (as ``driftline status``
does) and prints, per topic: records and bytes per request (keys, values
and headers as clients receive them), the default retention, and what
that retention holds at ``--rate`` requests per second. Brokers add
framing and indexes (a few percent) and replication multiplies it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftline.schemas.codec import encode_many  # noqa: E402
from driftline.streams.catalog import build_catalog  # noqa: E402
from driftline.streams.cli.status import fetched_watermarks, human_bytes  # noqa: E402
from driftline.streams.example import fraud_generator  # noqa: E402
from driftline.streams.kafka.broker import BROKER_KINDS, free_port, launch  # noqa: E402
from driftline.streams.kafka.topics import ensure_topics  # noqa: E402
from driftline.streams.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=1_000.0, help="requests per second for the storage column")
    ap.add_argument("--broker-kind", choices=BROKER_KINDS, default="embedded")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="driftline-bytes-"))
    broker = launch(args.broker_kind, log_file=work / "broker.log")
    try:
        settings = load_settings(broker=broker.bootstrap, namespace="bytes", feedback=True)
        ensure_topics(settings)
        env = {**os.environ, "DRIFTLINE_BROKER": broker.bootstrap, "DRIFTLINE_NAMESPACE": "bytes",
               "DRIFTLINE_FEEDBACK": "true", "DRIFTLINE_WEB_PORT": str(free_port()),
               "DRIFTLINE_DATA_DIR": str(work / "data")}
        worker = subprocess.Popen([sys.executable, "-m", "driftline.streams.cli", "worker"], env=env,
                                  stdout=(work / "worker.log").open("wb"), stderr=subprocess.STDOUT)
        try:
            sent = send(settings, args.n)
            wait_for_labels(settings, sent, worker, work)
        finally:
            worker.terminate()
            worker.wait(30)
        parts = settings.topic_partitions()
        sizes: dict[str, int] = {}
        marks = fetched_watermarks(settings.confluent(log_level=0), parts, timeout_s=60, sizes=sizes)
        rows = []
        for topic, n in parts.items():
            records = sum(marks[(topic, p)][1] - max(marks[(topic, p)][0], 0) for p in range(n))
            config = settings.topic_configs().get(topic, {})
            days = "compacted" if config.get("cleanup.policy") == "compact" else \
                f"{int(config['retention.ms']) / 86_400_000:g}d"
            per_request = sizes.get(topic, 0) / args.n
            held = per_request * args.rate * 86_400 * (float(days[:-1]) if days != "compacted" else 0)
            rows.append({"topic": topic.removeprefix("bytes."), "records_per_request": records / args.n,
                         "bytes_per_record": sizes.get(topic, 0) / records if records else 0.0,
                         "bytes_per_request": per_request, "retention": days, "held_bytes": held})
        print(f"| topic | records per request | bytes per record | bytes per request | retention | "
              f"held at {args.rate:g} requests/s |")
        print("| --- | ---: | ---: | ---: | --- | ---: |")
        for r in rows:
            held = "(last value per key)" if r["retention"] == "compacted" else human_bytes(int(r["held_bytes"]))
            print(f"| {r['topic']} | {r['records_per_request']:.3f} | {r['bytes_per_record']:.0f} | "
                  f"{r['bytes_per_request']:.0f} | {r['retention']} | {held} |")
        total = sum(r["bytes_per_request"] for r in rows)
        print(f"\nper million requests: {human_bytes(int(total * 1e6))} written across all topics; "
              f"held at {args.rate:g}/s with the default retention: "
              f"{human_bytes(int(sum(r['held_bytes'] for r in rows)))}")
        print(json.dumps({"n": args.n, "rate": args.rate, "broker": args.broker_kind, "topics": rows}))
    finally:
        broker.stop()


def send(settings, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    catalog = build_catalog(settings)
    gen = fraud_generator()
    records, labels = gen.generate(n, np.random.default_rng(7), start_ms=int(time.time() * 1000), step_ms=1)
    bad = set(range(0, n, 50))  # 2 % malformed: dead letters with their headers
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), records)
    values = [b"\x00\x00\x00\x00\x01" + v[5:] if i in bad else v for i, v in enumerate(values)]
    producer = Producer({**settings.producer_config(), "linger.ms": 20})
    for r, v in zip(records, values, strict=True):
        producer.produce(settings.requests_topic(settings.models[0]), v, r["card_id"].encode())
    feedback = catalog.latest("driftline.Feedback")
    now = int(time.time() * 1000)
    outcomes = [{"request_id": r["request_id"], "label": "fraud" if y else "legit", "target": None,
                 "event_time": now} for r, y in zip(records, labels.tolist(), strict=True)]
    for o, v in zip(outcomes, encode_many(feedback, outcomes), strict=True):
        producer.produce(settings.topic("feedback"), v, o["request_id"].encode())
    if producer.flush(120):
        raise SystemExit("the requests were not acknowledged")
    return [r["request_id"] for i, r in enumerate(records) if i not in bad]


def wait_for_labels(settings, sent: list[str], worker: subprocess.Popen, work: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    """Until the labeled topic holds one record per scored request (every label joined)."""
    deadline = time.monotonic() + 300
    parts = {settings.topic("labeled"): settings.partitions.labeled}
    while True:
        marks = fetched_watermarks(settings.confluent(log_level=0), parts, timeout_s=30)
        if sum(high - max(low, 0) for low, high in marks.values()) >= len(sent):
            return
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the worker stopped or the labels did not join: "
                             + (work / "worker.log").read_text()[-2000:])
        time.sleep(2)


if __name__ == "__main__":
    main()
