"""``driftline tail``: consumed messages as JSON lines, Avro decoded, headers as text."""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from driftline.streams.cli.common import Subcommands, cli_settings

if TYPE_CHECKING:
    from driftline.schemas.catalog import SchemaCatalog


def message_to_json(catalog: SchemaCatalog, msg: Any) -> dict[str, Any]:
    """One consumed message as a JSON-ready dict: Avro decoded, headers as text."""
    # Imported here: kafka.clients loads the drift detectors, which `driftline --help` need not wait for.
    from driftline.schemas.codec import decode
    from driftline.streams.core.records import jsonable
    from driftline.streams.kafka.clients import read_headers

    out: dict[str, Any] = {
        "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
        "key": msg.key().decode(errors="replace") if msg.key() is not None else None,
    }
    headers, unreadable = read_headers(msg)
    if headers:
        out["headers"] = {k: (v or b"").decode(errors="replace") for k, v in headers}
    elif unreadable:
        out["headers_error"] = unreadable
    value = msg.value()
    try:
        schema, record = decode(catalog, value)
        out["schema"] = f"{schema.subject} v{schema.version} (id {schema.id})"
        out["value"] = jsonable(record)
    except Exception:  # noqa: BLE001 - dead letters hold anything; show it raw
        out["value_base64"] = base64.b64encode(value or b"").decode()
    return out


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

    from driftline.streams.catalog import build_catalog
    from driftline.streams.errors import BrokerError

    settings = cli_settings(args)
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


def add_tail_command(sub: Subcommands) -> None:
    t = sub.add_parser("tail", help="print a driftline topic as JSON lines")
    t.add_argument("topic")
    t.add_argument("--broker")
    t.add_argument("--from-beginning", action="store_true")
    t.add_argument("--max", type=int, help="stop after N records")
    t.set_defaults(func=cmd_tail)
