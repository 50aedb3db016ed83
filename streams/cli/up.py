"""``driftline up``: embedded broker, worker and example traffic with a live summary (the demo is in demo.py)."""

from __future__ import annotations

import argparse

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_up(args: argparse.Namespace) -> int:
    from driftline.streams.cli.demo import run_up

    run_up(cli_settings(args, session_timeout_s=6.0, window_s=args.window_s, window_grace_s=1.0),
           duration=args.duration, rate=args.rate, drift_at=args.drift_at)
    return 0


def add_up_command(sub: Subcommands) -> None:
    up = sub.add_parser("up", help="embedded broker + worker + example traffic, with a live summary")
    up.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    up.add_argument("--rate", type=float, default=2000.0, help="requests per second (default 2000)")
    up.add_argument("--drift-at", type=float, default=None, help="start drift after S seconds")
    up.add_argument("--window-s", type=float, default=5.0, help="drift window length for the demo (default 5)")
    up.set_defaults(func=cmd_up)
