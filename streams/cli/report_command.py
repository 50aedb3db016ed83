"""``driftline report``: its flags and command; the HTML report itself is built in report.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from driftline.streams.cli.report import parse_window, write_reports

    settings = cli_settings(args)
    models = [args.model] if args.model else [b.name for b in settings.models]
    for path in write_reports(settings, models, parse_window(args.window), Path(args.out_dir),
                              int(time.time() * 1000)):
        print(path)
    return 0


def add_report_command(sub: Subcommands) -> None:
    rep = sub.add_parser("report", help="self-contained HTML drift report per model for a recent period")
    rep.add_argument("--model", help="one served model (default: every served model)")
    rep.add_argument("--window", default="1h", help="the period ending now: 30m, 1h, 2d (default 1h)")
    rep.add_argument("--out-dir", default=".", help="where to write driftline-report-<model>.html")
    rep.add_argument("--broker")
    rep.set_defaults(func=cmd_report)
