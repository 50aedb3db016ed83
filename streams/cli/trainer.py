"""``driftline trainer``: retrain requests to challenger, shadow, then promoted or rejected."""

from __future__ import annotations

import argparse

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_trainer(args: argparse.Namespace) -> int:
    from driftline.streams.catalog import build_catalog
    from driftline.streams.cli.common import require_broker
    from driftline.streams.trainer.service import run_trainer

    settings = cli_settings(args)
    # A service waits for its broker as the worker does (DRIFTLINE_BROKER_WAIT_S); --once as a command does.
    require_broker(settings, [settings.topic(t) for t in ("retrain", "labeled", "models")],
                   wait_s=None if args.once else settings.broker_wait_s)
    return run_trainer(settings, build_catalog(settings, writes=True), once=args.once)


def add_trainer_command(sub: Subcommands) -> None:
    tr = sub.add_parser("trainer", help="retrain requests → challenger → shadow → promoted or rejected")
    tr.add_argument("--broker")
    tr.add_argument("--once", action="store_true", help="stop when no request is left (tests, cron)")
    tr.set_defaults(func=cmd_trainer)
