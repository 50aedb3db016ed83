"""``driftline alerts``: alert and retrain events, one line each, in time order across both topics.

The events already on the topics are read to their end, sorted by when they
happened (an alert's ``created_at``, a retrain stage's ``requested_at``) and
printed; ``--follow`` then prints new ones as they arrive. ``--json`` prints
one JSON object per event instead. The broker is waited for a short while
(see :func:`~driftline.streams.cli.common.require_broker`) and a missing topic
is one line naming ``driftline topics create``; losing the broker while
reading stops with one line too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from driftline.streams.cli.common import Subcommands, cli_settings, event_json, require_broker, use_colour

READ_TIMEOUT_S = 30.0  # reading what is on the topics must reach their end within this


def event_time(event: Any) -> int:
    """When an alert was raised, or a retrain request reached its stage (epoch ms)."""
    from driftline.streams.core.events import Alert

    return int(event.created_at if isinstance(event, Alert) else event.requested_at)


def cmd_alerts(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.events import format_event, read_event
    from driftline.streams.core.poison import Skip, SkipLog
    from driftline.streams.errors import BrokerError

    settings = cli_settings(args)
    catalog = build_catalog(settings)
    topics = [settings.topic("alerts"), settings.topic("retrain")]
    parts = require_broker(settings, topics)
    down: list[str] = []

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            down.append(str(err))

    consumer = Consumer(settings.confluent(**{"group.id": "driftline-alerts", "enable.auto.commit": False,
                                                "enable.partition.eof": True, "log_level": 0,
                                                "error_cb": on_error}))
    history = not args.follow or args.from_beginning
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING if history else OFFSET_END)
                     for t in topics for p in range(parts[t])])
    colour = use_colour(sys.stdout) and not args.json
    skips = SkipLog(logging.getLogger("driftline.alerts"))

    def show(event: Any, msg: Any) -> None:
        if args.json:
            print(json.dumps(event_json(event, topic=msg.topic(), partition=msg.partition(), offset=msg.offset())),
                  flush=True)
        else:
            print(format_event(event, colour=colour), flush=True)

    at_end: set[tuple[str, int]] = set()
    total = sum(parts.values())
    held: list[tuple[int, int, Any, Any]] = []  # the events read before the end: printed sorted by time
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while args.follow or len(at_end) < total:
            if down:
                raise BrokerError(f"lost the broker at {settings.broker}: {down[0]}")
            reading_history = history and len(at_end) < total
            if reading_history and time.monotonic() > deadline:
                raise BrokerError(f"reading {' and '.join(topics)} did not reach their end within "
                                  f"{READ_TIMEOUT_S:.0f}s; is the broker at {settings.broker} overloaded?")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add((str(msg.topic()), int(msg.partition() or 0)))
                    if held and len(at_end) >= total:
                        for _, _, event, where in sorted(held, key=lambda h: (h[0], h[1])):
                            show(event, where)
                        held.clear()
                continue
            record = read_event(catalog, msg.value())
            if isinstance(record, Skip):  # not an alert or retrain event: say where it is, print the rest
                skips.skip(str(msg.topic()), msg.partition(), msg.offset(), msg.key(), record)
                continue
            if reading_history:
                held.append((event_time(record), len(held), record, msg))
            else:
                show(record, msg)
        for _, _, event, where in sorted(held, key=lambda h: (h[0], h[1])):
            show(event, where)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def add_alerts_command(sub: Subcommands) -> None:
    al = sub.add_parser("alerts", help="alert and retrain events, one line each, in time order")
    al.add_argument("--broker")
    al.add_argument("--follow", action="store_true", help="keep printing new events")
    al.add_argument("--from-beginning", action="store_true", help="with --follow: start with the old events")
    al.add_argument("--json", action="store_true", help="one JSON object per event (machine-readable)")
    al.set_defaults(func=cmd_alerts)
