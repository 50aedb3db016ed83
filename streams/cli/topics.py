"""``driftline topics create``: every driftline topic with its partition count."""

from __future__ import annotations

import argparse

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_topics_create(args: argparse.Namespace) -> int:
    from driftline.streams.cli.common import require_broker
    from driftline.streams.kafka.topics import ensure_topics

    settings = cli_settings(args)
    require_broker(settings)
    created = ensure_topics(settings)
    for topic, n in settings.topic_partitions().items():
        print(f"{topic}\t{n} partitions\t{'created' if topic in created else 'exists'}")
    return 0


def add_topics_commands(sub: Subcommands) -> None:
    topics = sub.add_parser("topics", help="topic administration")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    tc = tsub.add_parser("create", help="create every driftline topic with its partition count")
    tc.add_argument("--broker")
    tc.set_defaults(func=cmd_topics_create)
