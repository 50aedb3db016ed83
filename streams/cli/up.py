"""``driftline up``: a broker, worker and example traffic with a live summary (the demo is in demo.py).

``--broker-kind`` picks the broker it starts: ``embedded`` (Tansu, the default: nothing but pip) or ``kafka``
(a local Apache Kafka: Java 17 and, the first time, Maven). Not ``--broker``: every other command takes
bootstrap servers there.
"""

from __future__ import annotations

import argparse

from driftline.streams.cli.common import Subcommands, cli_settings
from driftline.streams.kafka.broker import BROKER_KINDS  # light: no Kafka client imported at module level


def cmd_up(args: argparse.Namespace) -> int:
    from driftline.streams.cli.demo import run_up

    run_up(cli_settings(args, session_timeout_s=6.0, window_s=args.window_s, window_grace_s=1.0),
           duration=args.duration, rate=args.rate, drift_at=args.drift_at, broker_kind=args.broker_kind)
    return 0


def add_up_command(sub: Subcommands) -> None:
    up = sub.add_parser("up", help="a broker + worker + example traffic, with a live summary")
    up.add_argument("--broker-kind", choices=BROKER_KINDS, default="embedded",
                    help="the broker it starts: embedded (Tansu, default) or kafka (a local Apache Kafka; "
                         "needs Java 17, fetches its jars with Maven the first time)")
    up.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    up.add_argument("--rate", type=float, default=2000.0, help="requests per second (default 2000)")
    up.add_argument("--drift-at", type=float, default=None, help="start drift after S seconds")
    up.add_argument("--window-s", type=float, default=5.0, help="drift window length for the demo (default 5)")
    up.set_defaults(func=cmd_up)
