"""End-to-end throughput and latency of one worker, Kafka to Kafka, on the embedded broker or Apache Kafka.

    python bench/e2e.py [--n 100000] [--baseline-n 30000] [--latency-rate 5000,20000] [--latency-s 10]
                        [--no-drift] [--phases throughput,naive,latency] [--broker-kind embedded|kafka]

1. Throughput: preloads N requests into a 4-partition topic, starts one
   ``driftline worker`` and times it from its first prediction to its last
   (producer timestamps of the prediction records, so start-up and the
   group join are not counted).
2. Baseline: the same work one event at a time in a plain Faust agent
   (``bench/naive_worker.py``), timed the same way on its own topics.
   The worker's CPU per event is its process CPU time (``/proc``) between
   those same two predictions, divided by the events: on a worker that is
   not saturated, throughput hides what an event costs.
3. Latency: a steady offered load (default 5,000 and 20,000 requests/s,
   10 s each) against a fresh worker; latency is from the request's produce
   time (its event_time) to the moment this process reads the prediction
   back, an upper bound on "prediction acknowledged" (it includes a second
   broker hop). The worker's and the broker's CPU per event are measured at
   that rate too (a worker far from saturated pays its fixed costs per
   batch and per wake-up on fewer events). For scale, the same rate through
   the bare broker: one hop, and two hops through a bare relay process
   (``bench/relay.py``, the worker's client settings, no work), the floor
   under the worker's two hops. Tansu's memory engine gets slower as a topic
   grows, so long runs measure the broker, not the worker.

Every phase runs on a fresh broker. Prints each figure as it is measured,
and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftline.schemas.codec import HEADER, encode_many  # noqa: E402
from driftline.streams.catalog import build_catalog  # noqa: E402
from driftline.streams.example import fraud_generator  # noqa: E402
from driftline.streams.kafka.broker import BROKER_KINDS, free_port, launch  # noqa: E402
from driftline.streams.kafka.topics import create_topics  # noqa: E402
from driftline.streams.settings import load_settings  # noqa: E402

SUBJECT = "driftline.examples.CardTransaction"


def preload(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 2_000_000})
    for k, v in zip(keys, values, strict=True):
        p.produce(topic, v, k)
    if p.flush(120):
        raise SystemExit("preload was not acknowledged")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)  # noqa: S603


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def read_predictions(bootstrap: str, topic: str, n: int, timeout_s: float, on_message=None,  # type: ignore[no-untyped-def]
                     proc: subprocess.Popen[bytes] | None = None):
    """Read ``n`` predictions; returns their producer timestamps (ms)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 10})
    c.assign([TopicPartition(topic, p, 0) for p in range(4)])
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    last_progress = time.monotonic()
    try:
        while len(stamps) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(stamps)} of {n} predictions within {timeout_s:.0f}s")
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"the worker exited with {proc.returncode}; see its log")
            if time.monotonic() - last_progress > 60:
                raise SystemExit(f"no prediction for 60 s after {len(stamps)} of {n}; see the worker's log")
            batch = c.consume(10_000, timeout=0) or c.consume(1, timeout=0.1)
            if batch:
                last_progress = time.monotonic()
            for m in batch:
                if m.error():
                    continue
                stamps.append(m.timestamp()[1])
                if on_message is not None:
                    on_message(m)
    finally:
        c.close()
    return np.asarray(stamps)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``), all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate_of(stamps: np.ndarray) -> float:
    span = (stamps.max() - stamps.min()) / 1000
    return (len(stamps) - 1) / span if span > 0 else float("inf")


def env_for(bootstrap: str, ns: str, data: Path, drift: bool = True, guarantee: str = "at_least_once"
            ) -> dict[str, str]:
    return {**os.environ, "DRIFTLINE_DRIFT": "true" if drift else "false", "DRIFTLINE_PROCESSING_GUARANTEE": guarantee,
            "DRIFTLINE_BROKER": bootstrap, "DRIFTLINE_NAMESPACE": ns,
            "DRIFTLINE_DATA_DIR": str(data / ns), "DRIFTLINE_SESSION_TIMEOUT_S": "6",
            "DRIFTLINE_WEB_PORT": str(free_port()), "DRIFTLINE_PROVIDERS": "cpu"}


def throughput(bootstrap: str, ns: str, n: int, data: Path, naive: bool, catalog, gen,  # type: ignore[no-untyped-def]
               drift: bool = True, guarantee: str = "at_least_once", broker_pid: int | None = None
               ) -> Throughput:
    """Events/s and CPU µs per event, all between the first and the last prediction."""
    settings = load_settings(broker=bootstrap, namespace=ns)
    create_topics(settings.confluent(), settings.topic_partitions())
    records, _ = gen.generate(n, np.random.default_rng(5))
    values = encode_many(catalog.latest(SUBJECT), records)
    preload(bootstrap, settings.topic("requests"), values, [r["card_id"].encode() for r in records])
    good = sum(1 for r in records if r["ip_risk"] is not None)  # the example model needs ip_risk
    cmd = ([sys.executable, "bench/naive_worker.py", "worker", "-l", "info"] if naive
           else [sys.executable, "-m", "driftline.streams.cli", "worker"])
    env = env_for(bootstrap, ns, data, drift, guarantee)
    proc = start(cmd, env, data / f"{ns}.log")
    cpu_at_first: list[float] = []
    parts_at_first: dict[str, float] = {}

    def on_message(_m) -> None:  # type: ignore[no-untyped-def]
        if not cpu_at_first:
            cpu_at_first.extend((cpu_seconds(proc.pid), cpu_seconds(broker_pid) if broker_pid else 0.0))
            parts_at_first.update(cpu_parts(env["DRIFTLINE_WEB_PORT"]))

    try:
        stamps = read_predictions(bootstrap, settings.topic("predictions"), good, timeout_s=600, proc=proc,
                                  on_message=on_message)
        cpu = cpu_seconds(proc.pid) - cpu_at_first[0]
        broker_cpu = (cpu_seconds(broker_pid) - cpu_at_first[1]) if broker_pid else float("nan")
        parts_at_last = cpu_parts(env["DRIFTLINE_WEB_PORT"])
    finally:
        stop(proc)
    events = max(1, len(stamps) - 1)
    codec = codec_of(data / f"{ns}.log")
    if codec is not None:
        print(f"  the worker used the {codec} Avro codec"
              + ("" if codec == "compiled" else " (not the compiled one: build it, pip install -e ., to compare "
                 "with bench/RESULTS.md)"), flush=True)
    return Throughput(rate_of(stamps), 1e6 * cpu / events, 1e6 * broker_cpu / events,
                      parts_per_event(parts_at_first, parts_at_last, events))


class Throughput(NamedTuple):
    """One throughput phase: events/s and CPU µs per event (worker, broker, the worker's by thread and stage)."""

    rate: float
    cpu: float
    broker_cpu: float
    parts: dict[str, float]


def codec_of(log: Path) -> str | None:
    """Which Avro codec the worker says it started with (its ``worker starting`` line); None if it does not say."""
    import re

    try:
        found = re.search(r"worker starting: .*?(\w+) Avro codec", log.read_text(errors="replace"))
    except OSError:
        return None
    return found.group(1) if found else None


def cpu_parts(port: str) -> dict[str, float]:
    """The worker's CPU seconds so far by thread and by score stage, from its /metrics; {} without one.

    Keys: ``thread:<name>`` (driftline_thread_cpu_seconds_total) and
    ``stage:<name>`` (driftline_score_cpu_seconds_total, parts of the
    MainThread's figure).
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310 - local
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        kind = {"driftline_thread_cpu_seconds": "thread", "driftline_score_cpu_seconds": "stage"}.get(family.name)
        for sample in family.samples if kind else ():
            if sample.name.endswith("_total"):
                out[f"{kind}:{sample.labels[kind]}"] = sample.value
    return out


def parts_per_event(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """µs per event of each :func:`cpu_parts` key between two readings, busiest first, idle ones left out."""
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: round(1e6 * v / events, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}


def print_parts(parts: dict[str, float]) -> None:
    if parts:
        print("  worker CPU µs per event by thread:", ", ".join(
            f"{k.split(':', 1)[1]} {v:.2f}" for k, v in parts.items() if k.startswith("thread:")), flush=True)
        print("  of which the score loop's stages:", ", ".join(
            f"{k.split(':', 1)[1]} {v:.2f}" for k, v in parts.items() if k.startswith("stage:")), flush=True)


def latency(bootstrap: str, ns: str, rate: float, seconds: float, data: Path, catalog, gen,  # type: ignore[no-untyped-def]
            warmup_s: float = 0.0, broker_pid: int | None = None) -> tuple[np.ndarray, float, float]:
    """End-to-end latency of requests sent at ``rate`` for ``seconds``, after ``warmup_s`` of the same load.

    The warm-up's requests are sent and answered but not measured: a JVM
    broker compiles its hot paths in the first seconds under load. Returns
    the latencies and the worker's and the broker's CPU µs per measured
    request (at this rate a worker is far from saturated: what an event
    costs here includes every fixed cost per batch and per wake-up).
    """
    settings = load_settings(broker=bootstrap, namespace=ns)
    create_topics(settings.confluent(), settings.topic_partitions())
    schema = catalog.latest(SUBJECT)
    pred_schema = catalog.latest("driftline.Prediction")
    env = env_for(bootstrap, ns, data)
    proc = start([sys.executable, "-m", "driftline.streams.cli", "worker"], env,
                 data / f"{ns}.log")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})  # librdkafka's default
    topic = settings.topic("requests")
    rng = np.random.default_rng(9)
    try:
        # Warm-up: wait until the worker answers, so the group join is not measured.
        warm, _ = gen.generate(10, rng)
        warm = [{**r, "ip_risk": 0.1} for r in warm]
        for r, v in zip(warm, encode_many(schema, warm), strict=True):
            producer.produce(topic, v, r["card_id"].encode())
        producer.flush(10)
        read_predictions(bootstrap, settings.topic("predictions"), 10, timeout_s=60)

        import io

        from fastavro import schemaless_reader

        lat: list[float] = []
        produced_lat: list[float] = []
        measured_from: list[int] = []  # the send time (ms) of the first measured request

        cpu_from: list[float] = []
        threads_from: dict[str, float] = {}

        def on_message(m) -> None:  # type: ignore[no-untyped-def]
            rec = schemaless_reader(io.BytesIO(m.value()[HEADER.size:]), pred_schema.fast, None)
            if not measured_from or rec["event_time"] < measured_from[0]:
                return
            if not cpu_from:
                cpu_from.extend((cpu_seconds(proc.pid), cpu_seconds(broker_pid) if broker_pid else 0.0))
                threads_from.update(cpu_parts(env["DRIFTLINE_WEB_PORT"]))
            lat.append(time.time() * 1000 - rec["event_time"])
            produced_lat.append(m.timestamp()[1] - rec["event_time"])

        import threading

        warm_n = int(rate * warmup_s)
        total = warm_n + int(rate * seconds)
        reader = threading.Thread(target=lambda: read_predictions(
            bootstrap, settings.topic("predictions"), total + 10, timeout_s=seconds + 120,
            on_message=on_message))
        reader.start()
        # Requests are generated up front; each is stamped with its produce time and
        # encoded just before it is sent, so the load generator stays light.
        pool, _ = gen.generate(total, rng)
        pool = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in pool]
        t0 = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * rate)) - sent
            if due > 0:
                now_ms = int(time.time() * 1000)
                if sent + due > warm_n and not measured_from:
                    measured_from.append(now_ms)
                chunk = pool[sent:sent + due]
                for r in chunk:
                    r["event_time"] = now_ms
                for r, v in zip(chunk, encode_many(schema, chunk), strict=True):
                    producer.produce(topic, v, r["card_id"].encode())
                producer.poll(0)
                sent += due
            time.sleep(0.002)
        producer.flush(30)
        reader.join()
        events = max(1, len(lat) - 1)
        worker_cpu = 1e6 * (cpu_seconds(proc.pid) - cpu_from[0]) / events
        print_parts(parts_per_event(threads_from, cpu_parts(env["DRIFTLINE_WEB_PORT"]), events))
        broker_cpu = 1e6 * (cpu_seconds(broker_pid) - cpu_from[1]) / events if broker_pid else float("nan")
        print("worker-side (prediction produce time - request time) p50/p99 ms:",
              np.percentile(produced_lat, [50, 99]).round(1), flush=True)
        return np.asarray(lat), worker_cpu, broker_cpu
    finally:
        stop(proc)


def broker_hop(bootstrap: str, topic: str, rate: float, seconds: float, warmup_s: float = 0.0,
               relay_to: str | None = None, data: Path | None = None) -> np.ndarray:
    """Produce→consume latency of the bare broker at the same rate (after a warm-up).

    With ``relay_to``, two hops: a bare relay process (``bench/relay.py``,
    the worker's linger and fetch wait) copies ``topic`` to ``relay_to``
    and the latency is read there: the floor under the worker's two hops.
    """
    import threading

    settings = load_settings()
    read_from = relay_to or topic
    create_topics({"bootstrap.servers": bootstrap}, {topic: 4, **({relay_to: 4} if relay_to else {})})
    relay = None
    if relay_to:  # the relay starts reading at offset 0 as the load starts: its first seconds are not measured
        warmup_s = max(warmup_s, 2.0)
        relay = start([sys.executable, "bench/relay.py", bootstrap, topic, relay_to, str(settings.producer_linger_ms),
                       str(settings.fetch_wait_ms), "4"], dict(os.environ),
                      (data or Path(tempfile.gettempdir())) / "relay.log")
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-hop", "fetch.wait.max.ms": 10})
    c.assign([TopicPartition(read_from, p, 0) for p in range(4)])
    lat: list[float] = []
    total = int(rate * (seconds + warmup_s))

    def read() -> None:
        deadline = time.monotonic() + seconds + 60
        while len(lat) < total and time.monotonic() < deadline:
            for m in c.consume(10_000, timeout=0) or c.consume(1, timeout=0.1):
                if m.error() is None:
                    lat.append(time.time() * 1000 - float(m.value()))

    reader = threading.Thread(target=read)
    reader.start()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    t0, sent = time.monotonic(), 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate)) - sent
        for _ in range(max(due, 0)):
            p.produce(topic, str(time.time() * 1000).encode(), str(sent).encode())
            sent += 1
        p.poll(0)
        time.sleep(0.002)
    p.flush(30)
    reader.join()
    c.close()
    if relay is not None:
        stop(relay)
    sent_at = np.asarray(lat)
    return sent_at[-int(rate * seconds):] if warmup_s else sent_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--baseline-n", type=int, default=30_000)
    ap.add_argument("--latency-rate", default="5000,20000",
                    help="offered request rates for the latency phase, comma-separated")
    ap.add_argument("--phases", default="throughput,naive,latency",
                    help="which phases run (comma-separated): throughput, naive, latency")
    ap.add_argument("--no-drift", action="store_true",
                    help="also time the batched worker with drift windows off, to show what drift costs")
    ap.add_argument("--latency-s", type=float, default=10,
                    help="keep it short: the embedded broker's fetch cost grows with topic length")
    ap.add_argument("--warmup-s", type=float, default=0.0,
                    help="load at the latency rate this long before measuring (a cold JVM broker: use 20)")
    ap.add_argument("--broker-kind", choices=BROKER_KINDS, default="embedded",
                    help="the embedded Tansu broker or a local Apache Kafka (started and removed per phase)")
    ap.add_argument("--exactly-once", action="store_true",
                    help="also time the batched worker with processing_guarantee=exactly_once (Apache Kafka only)")
    args = ap.parse_args()
    kind = args.broker_kind

    def broker_for(phase: str):  # type: ignore[no-untyped-def]
        return launch(kind, log_file=data / f"broker-{phase}.log")

    gen = fraud_generator()
    catalog = build_catalog(load_settings())
    data = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    # Each phase gets a fresh broker: Tansu's memory engine slows down as it holds
    # more data, and one phase's topics must not tax the next one's.
    phases = set(args.phases.split(","))
    result: dict[str, object] = {}

    def note(**figures: object) -> None:
        result.update({k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()})

    # Each phase gets a fresh broker: Tansu's memory engine slows down as it holds
    # more data, and one phase's topics must not tax the next one's.
    batched = naive = None
    if "throughput" in phases:
        with broker_for("batched") as broker:
            batched, cpu, broker_cpu, parts = throughput(broker.bootstrap, "benchbatched", args.n, data,
                                                         naive=False, catalog=catalog, gen=gen, broker_pid=broker.pid)
        print(f"batched worker: {batched:,.0f} events/s over {args.n:,} requests, CPU per event: worker "
              f"{cpu:.1f} µs, broker {broker_cpu:.1f} µs", flush=True)
        print_parts(parts)
        note(events_per_s=round(batched), worker_cpu_us_per_event=cpu, broker_cpu_us_per_event=broker_cpu,
             worker_cpu_us_per_event_by_part=parts)
    if args.exactly_once:
        with broker_for("eos") as broker:
            eos, eos_cpu, eos_broker, _ = throughput(broker.bootstrap, "bencheos", args.n, data, naive=False,
                                                  catalog=catalog, gen=gen, guarantee="exactly_once",
                                                  broker_pid=broker.pid)
        print(f"batched worker, exactly once: {eos:,.0f} events/s, CPU per event: worker {eos_cpu:.1f} µs, "
              f"broker {eos_broker:.1f} µs", flush=True)
        note(exactly_once_events_per_s=round(eos), exactly_once_cpu_us_per_event=eos_cpu,
             exactly_once_broker_cpu_us_per_event=eos_broker)
    if args.no_drift:
        with broker_for("nodrift") as broker:
            no_drift, nd_cpu, nd_broker, nd_parts = throughput(broker.bootstrap, "benchnodrift", args.n, data,
                                                               naive=False, catalog=catalog, gen=gen, drift=False,
                                                               broker_pid=broker.pid)
        print(f"batched worker, drift off: {no_drift:,.0f} events/s, CPU per event: worker {nd_cpu:.1f} µs, "
              f"broker {nd_broker:.1f} µs", flush=True)
        print_parts(nd_parts)
        note(no_drift_events_per_s=round(no_drift), no_drift_cpu_us_per_event=nd_cpu,
             no_drift_cpu_us_per_event_by_part=nd_parts)
        if "worker_cpu_us_per_event" in result:
            drift_cpu = float(result["worker_cpu_us_per_event"]) - nd_cpu  # type: ignore[arg-type]
            print(f"drift costs {drift_cpu:.1f} µs of worker CPU per event", flush=True)
            note(drift_cpu_us_per_event=drift_cpu)
    if "naive" in phases:
        with broker_for("naive") as broker:
            naive, naive_cpu, _, _ = throughput(broker.bootstrap, "benchnaive", args.baseline_n, data, naive=True,
                                             catalog=catalog, gen=gen)
        print(f"naive per-event Faust agent: {naive:,.0f} events/s over {args.baseline_n:,} requests", flush=True)
        note(baseline_events_per_s=round(naive), baseline_cpu_us_per_event=naive_cpu)
    if batched and naive:
        print(f"ratio batched / naive: {batched / naive:.1f}x")
        note(ratio=round(batched / naive, 2))
    for rate in ([float(r) for r in args.latency_rate.split(",")] if "latency" in phases else []):
        tag = f"{rate / 1000:g}k"
        with broker_for(f"latency-{tag}") as broker:
            lat, cpu, broker_cpu = latency(broker.bootstrap, f"benchlatency{tag}", rate, args.latency_s, data,
                                           catalog, gen, warmup_s=args.warmup_s, broker_pid=broker.pid)
        p50, p99 = np.percentile(lat, [50, 99])
        by_second = [round(float(np.percentile(c, 99)), 1) for c in np.array_split(lat, max(1, int(args.latency_s)))]
        print(f"latency at {rate:,.0f}/s offered: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(lat):,} requests); "
              f"p99 second by second: {by_second}; CPU per event: worker {cpu:.1f} µs "
              f"({cpu * rate / 1e6:.2f} of a core), broker {broker_cpu:.1f} µs", flush=True)
        with broker_for(f"hop-{tag}") as broker:
            hop = broker_hop(broker.bootstrap, "benchhop", rate, args.latency_s, args.warmup_s)
        with broker_for(f"relay-{tag}") as broker:
            two = broker_hop(broker.bootstrap, "benchrelayin", rate, args.latency_s, args.warmup_s,
                             relay_to="benchrelayout", data=data)
        h50, h99 = np.percentile(hop, [50, 99])
        r50, r99 = np.percentile(two, [50, 99])
        print(f"bare broker at the same rate: one hop p50 {h50:.1f} / p99 {h99:.1f} ms; two hops through a bare "
              f"relay p50 {r50:.1f} / p99 {r99:.1f} ms (the worker adds {p99 - r99:+.1f} ms at p99)", flush=True)
        key = "" if rate == 5000 else f"_{tag}"
        note(**{f"p50_ms{key}": float(p50), f"p99_ms{key}": float(p99), f"p99_ms_by_second{key}": by_second,
                f"latency_worker_cpu_us_per_event{key}": cpu, f"latency_broker_cpu_us_per_event{key}": broker_cpu,
                f"broker_hop_p50_ms{key}": float(h50), f"broker_hop_p99_ms{key}": float(h99),
                f"two_hops_p50_ms{key}": float(r50), f"two_hops_p99_ms{key}": float(r99)})
    note(broker=kind, n=args.n, baseline_n=args.baseline_n, latency_rate=args.latency_rate,
         latency_s=args.latency_s, warmup_s=args.warmup_s,
         machine=f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
