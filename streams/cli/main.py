"""``driftline``: the parser and ``main()``; each command lives in the module named after it.

Flags fall back to ``DRIFTLINE_*`` variables (see Settings).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from driftline.schemas.errors import DriftlineError
from driftline.streams.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    # Imported here, as the model commands were before: `import driftline.streams.cli` stays light.
    # Where a command's own module is slow to import (demo.py, report.py), its flags and
    # `cmd_*` function sit in a light one beside it (up.py, report_command.py).
    from driftline.streams.cli import (
        alerts,
        example,
        explain,
        model,
        produce,
        profile,
        report_command,
        schemas,
        status,
        tail,
        topics,
        trainer,
        up,
        worker,
    )

    p = argparse.ArgumentParser(prog="driftline", description="Streaming data plane for ML models.")
    p.add_argument("--version", action="version", version=f"driftline {version()}")
    p.add_argument("--log-level", default=None, metavar="LEVEL",
                   help="debug, info, warning or error (default: info for worker, trainer and up; warning for the "
                        "other commands)")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="text (default) or json: one object per line, with event, model, version, actor fields on "
                        "deployment changes, alerts, retrain stages, start and stop (DRIFTLINE_LOG_FORMAT)")
    sub = p.add_subparsers(dest="command", required=True)
    # In the order `driftline --help` lists them.
    up.add_up_command(sub)  # the demo itself runs in demo.py
    example.add_example_command(sub)
    worker.add_worker_command(sub)
    produce.add_produce_command(sub)
    tail.add_tail_command(sub)
    alerts.add_alerts_command(sub)
    explain.add_explain_command(sub)
    topics.add_topics_commands(sub)
    report_command.add_report_command(sub)  # the report itself is built in report.py
    trainer.add_trainer_command(sub)
    status.add_status_command(sub)
    model.add_model_commands(sub)
    profile.add_profile_commands(sub)
    schemas.add_schemas_commands(sub)
    return p


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SERVICES = {"worker", "trainer", "up"}  # long-running: they log their progress at info by default


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("driftline")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.command in SERVICES else "warning")
    if level.lower() not in LOG_LEVELS:
        print(f"driftline: --log-level {level}: give one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    who = f"w{os.environ['DRIFTLINE_PROCESS_INDEX']} " if "DRIFTLINE_PROCESS_INDEX" in os.environ else ""
    from driftline.streams.logformat import configure, log_format

    fmt = args.log_format or log_format()
    configure(level, fmt, f"%(asctime)s {who}%(levelname)s %(name)s: %(message)s")
    if fmt == "json":  # what a command changes (a deployment) is an audit record, whatever the level
        logging.getLogger("driftline.audit").setLevel(logging.INFO)
    if args.log_level is None and args.command not in SERVICES:
        # librdkafka's warnings are retries it makes by itself ("coordinator load in progress: retrying"): a
        # command shows its errors only (repeats held back), and says what went wrong in its own last line.
        logging.getLogger("driftline.kafka.librdkafka").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    except DriftlineError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # A Kafka client's own error that no command turned into a sentence: still one line, never a traceback.
        from confluent_kafka import KafkaException

        if not isinstance(exc, KafkaException):
            raise
        err = exc.args[0] if exc.args else exc
        reason = err.str() if hasattr(err, "str") else str(err)
        print(f"driftline: the Kafka client failed ({reason}); check DRIFTLINE_BROKER and that the broker is up",
              file=sys.stderr)
        return 1
