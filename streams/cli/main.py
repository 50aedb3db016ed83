"""The ``driftline`` command. Flags fall back to ``DRIFTLINE_*`` variables (see Settings)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from driftline.schemas.errors import DriftlineError
from driftline.streams.errors import ConfigError
from driftline.streams.settings import Settings, load_settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(broker=getattr(args, "broker", None), **extra)


def cmd_up(args: argparse.Namespace) -> int:
    from driftline.streams.cli.demo import run_up

    run_up(_settings(args, session_timeout_s=6.0, window_s=args.window_s, window_grace_s=1.0),
           duration=args.duration, rate=args.rate, drift_at=args.drift_at)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.require_gpu:
        extra["require_gpu"] = True
    if args.providers:
        extra["providers"] = args.providers
    settings = _settings(args, **extra)
    if args.processes > 1:
        from driftline.streams.app.supervisor import supervise

        argv = [*(["--broker", args.broker] if args.broker else []),
                *(["--providers", args.providers] if args.providers else []),
                *(["--require-gpu"] if args.require_gpu else [])]
        return supervise(settings, args.processes, argv, args.restart_delay)
    from driftline.streams.app.worker import run_worker

    run_worker(settings)
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from driftline.streams.kafka.topics import ensure_topics

    settings = _settings(args)
    created = ensure_topics(settings)
    for topic, n in settings.topic_partitions().items():
        print(f"{topic}\t{n} partitions\t{'created' if topic in created else 'exists'}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from driftline.inference.manifest import Manifest
    from driftline.inference.registry import ModelRegistry
    from driftline.schemas.codec import encode
    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.records import coerce, read_input

    settings = _settings(args)
    binding = next((m for m in settings.models if m.name == args.model), None) if args.model else settings.models[0]
    if binding is None:
        raise ConfigError(f"--model {args.model}: not among the served models (DRIFTLINE_MODELS)")
    manifest = Manifest.read(ModelRegistry(settings.model_dir).path(binding.name, binding.version))
    catalog = build_catalog(settings)
    schema = catalog.get(manifest.request_subject, args.schema_version)
    topic = settings.requests_topic(binding)
    producer = Producer(settings.producer_config())
    sent = bad = 0
    for line, row in read_input(Path(args.file)):
        try:
            record = coerce(schema, row)
            value = encode(schema, record)
        except Exception as exc:  # noqa: BLE001 - report the line, keep going
            print(f"{args.file}:{line}: not a valid {schema.subject}: {exc}", file=sys.stderr)
            bad += 1
            continue
        key = record.get(manifest.profile.key_field)
        producer.produce(topic, value, str(key).encode() if key is not None else None)
        producer.poll(0)
        sent += 1
    left = producer.flush(30)
    print(f"produced {sent - left} records to {topic} with {schema.subject} v{schema.version}"
          f" (id {schema.id}); {bad} lines rejected")
    return 1 if bad or left else 0


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

    from driftline.streams.catalog import build_catalog
    from driftline.streams.cli.tail import message_to_json
    from driftline.streams.errors import BrokerError

    settings = _settings(args)
    catalog = build_catalog(settings)
    down: list[str] = []

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            down.append(str(err))

    # Assigned, not subscribed: no consumer-group join to wait for, nothing committed.
    consumer = Consumer(settings.confluent(**{
        "group.id": "driftline-tail", "enable.auto.commit": False, "error_cb": on_error, "log_level": 0,
        "fetch.wait.max.ms": settings.fetch_wait_ms,
    }))
    try:
        meta = consumer.list_topics(args.topic, timeout=10).topics.get(args.topic)
    except KafkaException as exc:
        consumer.close()
        raise BrokerError(f"cannot reach the broker at {settings.broker}: {exc}; is DRIFTLINE_BROKER right?") from exc
    if meta is None or meta.error is not None:
        consumer.close()
        raise BrokerError(f"topic {args.topic} does not exist on {settings.broker}; see `driftline topics create`")
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    consumer.assign([TopicPartition(args.topic, p, start) for p in meta.partitions])
    where = "the beginning" if args.from_beginning else "the end"
    print(f"following {args.topic} from {where} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    shown = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while args.max is None or shown < args.max:
            if down:
                raise BrokerError(f"lost the broker at {settings.broker}: {down[0]}")
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            print(json.dumps(message_to_json(catalog, msg)), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_profile_build(args: argparse.Namespace) -> int:
    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.profiling import build_profile

    target, rows = build_profile(Path(args.model_dir), Path(args.data), build_catalog(_settings(args)),
                                 force=args.force)
    print(f"wrote {target} from {rows} valid rows of {args.data}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.events import format_event, read_event
    from driftline.streams.core.poison import Skip, SkipLog

    settings = _settings(args)
    catalog = build_catalog(settings)
    topics = [settings.topic("alerts"), settings.topic("retrain")]
    consumer = Consumer(settings.confluent(**{"group.id": "driftline-alerts", "enable.auto.commit": False,
                                                "enable.partition.eof": True, "log_level": 0}))
    start = OFFSET_END if args.follow and not args.from_beginning else OFFSET_BEGINNING
    parts = settings.topic_partitions()
    consumer.assign([TopicPartition(t, p, start) for t in topics for p in range(parts[t])])
    colour = sys.stdout.isatty()
    skips = SkipLog(logging.getLogger("driftline.alerts"))
    at_end: set[tuple[str, int]] = set()
    total = sum(parts[t] for t in topics)
    try:
        while args.follow or len(at_end) < total:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add((str(msg.topic()), int(msg.partition() or 0)))
                continue
            record = read_event(catalog, msg.value())
            if isinstance(record, Skip):  # not an alert or retrain event: say where it is, print the rest
                skips.skip(str(msg.topic()), msg.partition(), msg.offset(), msg.key(), record)
                continue
            print(format_event(record, colour=colour), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from driftline.streams.cli.report import parse_window, write_reports

    settings = _settings(args)
    models = [args.model] if args.model else [b.name for b in settings.models]
    for path in write_reports(settings, models, parse_window(args.window), Path(args.out_dir),
                              int(time.time() * 1000)):
        print(path)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from driftline.streams.cli.status import render_status

    settings = _settings(args)
    print(render_status(settings, args.worker or f"http://127.0.0.1:{settings.web_port}", alerts=args.alerts))
    return 0


def cmd_trainer(args: argparse.Namespace) -> int:
    from driftline.streams.catalog import build_catalog
    from driftline.streams.trainer.service import run_trainer

    settings = _settings(args)
    return run_trainer(settings, build_catalog(settings), once=args.once)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driftline", description="Streaming data plane for ML models.")
    p.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="embedded broker + worker + example traffic, with a live summary")
    up.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    up.add_argument("--rate", type=float, default=2000.0, help="requests per second (default 2000)")
    up.add_argument("--drift-at", type=float, default=None, help="start drift after S seconds")
    up.add_argument("--window-s", type=float, default=5.0, help="drift window length for the demo (default 5)")
    up.set_defaults(func=cmd_up)

    w = sub.add_parser("worker", help="run a score worker against DRIFTLINE_BROKER")
    w.add_argument("--broker", help="bootstrap servers (DRIFTLINE_BROKER)")
    w.add_argument("--providers", choices=["auto", "cpu", "cuda"], help="ONNX Runtime providers")
    w.add_argument("--require-gpu", action="store_true", help="fail at start unless CUDA is active")
    w.add_argument("--processes", type=int, default=1, help="score processes in the same consumer group (default 1)")
    w.add_argument("--restart-delay", type=float, default=10.0,
                   help="with --processes: restart an exited process after S seconds (0: never; default 10)")
    w.set_defaults(func=cmd_worker)

    pr = sub.add_parser("produce", help="encode JSON-lines or CSV records and publish them as requests")
    pr.add_argument("file", help="path (.jsonl/.json or .csv), or - for stdin (JSON lines)")
    pr.add_argument("--broker")
    pr.add_argument("--model", help="served model whose requests topic and schema to use")
    pr.add_argument("--schema-version", type=int, help="write with this version of the request schema")
    pr.set_defaults(func=cmd_produce)

    t = sub.add_parser("tail", help="print a driftline topic as JSON lines")
    t.add_argument("topic")
    t.add_argument("--broker")
    t.add_argument("--from-beginning", action="store_true")
    t.add_argument("--max", type=int, help="stop after N records")
    t.set_defaults(func=cmd_tail)

    al = sub.add_parser("alerts", help="alert and retrain events, one line each")
    al.add_argument("--broker")
    al.add_argument("--follow", action="store_true", help="keep printing new events")
    al.add_argument("--from-beginning", action="store_true", help="with --follow: start with the old events")
    al.set_defaults(func=cmd_alerts)

    topics = sub.add_parser("topics", help="topic administration")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    tc = tsub.add_parser("create", help="create every driftline topic with its partition count")
    tc.add_argument("--broker")
    tc.set_defaults(func=cmd_topics_create)

    rep = sub.add_parser("report", help="self-contained HTML drift report per model for a recent period")
    rep.add_argument("--model", help="one served model (default: every served model)")
    rep.add_argument("--window", default="1h", help="the period ending now: 30m, 1h, 2d (default 1h)")
    rep.add_argument("--out-dir", default=".", help="where to write driftline-report-<model>.html")
    rep.add_argument("--broker")
    rep.set_defaults(func=cmd_report)

    tr = sub.add_parser("trainer", help="retrain requests → challenger → shadow → promoted or rejected")
    tr.add_argument("--broker")
    tr.add_argument("--once", action="store_true", help="stop when no request is left (tests, cron)")
    tr.set_defaults(func=cmd_trainer)

    st = sub.add_parser("status", help="topics and lag, live models and provider, the last alerts")
    st.add_argument("--broker")
    st.add_argument("--worker", help="a worker's web address for the provider (default http://127.0.0.1:WEB_PORT)")
    st.add_argument("--alerts", type=int, default=5, help="how many recent alerts (default 5)")
    st.set_defaults(func=cmd_status)

    from driftline.streams.cli.model import add_model_commands

    add_model_commands(sub)

    prof = sub.add_parser("profile", help="reference profiles for drift detection")
    psub = prof.add_subparsers(dest="profile_command", required=True)
    pb = psub.add_parser("build", help="write profile.json into a model version from its training data")
    pb.add_argument("--data", required=True, help="training requests, JSON lines or CSV")
    pb.add_argument("--model-dir", required=True, help="the model version directory")
    pb.add_argument("--force", action="store_true", help="replace an existing profile.json")
    pb.set_defaults(func=cmd_profile_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    who = f"w{os.environ['DRIFTLINE_PROCESS_INDEX']} " if "DRIFTLINE_PROCESS_INDEX" in os.environ else ""
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s {who}%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    except DriftlineError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 1

