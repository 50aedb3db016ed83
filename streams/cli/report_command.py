"""``driftline report``: its flags and command; the HTML report itself is built in report.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from driftline.inference.registry import ModelRegistry
    from driftline.streams.cli.common import require_broker
    from driftline.streams.cli.report import parse_window, write_reports
    from driftline.streams.errors import ConfigError

    settings = cli_settings(args)
    window = parse_window(args.window)
    if args.model:
        registry = ModelRegistry(settings.model_dir)
        known = [name for name in registry.names() if registry.versions(name)]
        if args.model not in known:
            have = ", ".join(known) if known else "none"
            raise ConfigError(f"--model {args.model}: no such model in the registry at {settings.model_dir} "
                              f"(it has: {have}); check the name or DRIFTLINE_MODEL_DIR")
    models = [args.model] if args.model else [b.name for b in settings.models]
    require_broker(settings, [settings.topic("sketches"), settings.topic("alerts")])
    for path in write_reports(settings, models, window, Path(args.out_dir),
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
