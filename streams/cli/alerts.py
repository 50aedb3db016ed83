"""``driftline alerts``: alert and retrain events, one line each."""

from __future__ import annotations

import argparse
import logging
import sys

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_alerts(args: argparse.Namespace) -> int:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.events import format_event, read_event
    from driftline.streams.core.poison import Skip, SkipLog

    settings = cli_settings(args)
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


def add_alerts_command(sub: Subcommands) -> None:
    al = sub.add_parser("alerts", help="alert and retrain events, one line each")
    al.add_argument("--broker")
    al.add_argument("--follow", action="store_true", help="keep printing new events")
    al.add_argument("--from-beginning", action="store_true", help="with --follow: start with the old events")
    al.set_defaults(func=cmd_alerts)
