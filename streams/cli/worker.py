"""``driftline worker``: a score worker, or ``--processes N`` of them under a supervisor."""

from __future__ import annotations

import argparse
from typing import Any

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_worker(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.require_gpu:
        extra["require_gpu"] = True
    if args.providers:
        extra["providers"] = args.providers
    settings = cli_settings(args, **extra)
    if args.processes > 1:
        from driftline.streams.app.supervisor import supervise

        argv = [*(["--broker", args.broker] if args.broker else []),
                *(["--providers", args.providers] if args.providers else []),
                *(["--require-gpu"] if args.require_gpu else [])]
        return supervise(settings, args.processes, argv, args.restart_delay)
    # Faust (with aiokafka and mode) is imported here only: no other command waits for it.
    from driftline.streams.app.worker import run_worker

    run_worker(settings)
    return 0


def add_worker_command(sub: Subcommands) -> None:
    w = sub.add_parser("worker", help="run a score worker against DRIFTLINE_BROKER")
    w.add_argument("--broker", help="bootstrap servers (DRIFTLINE_BROKER)")
    w.add_argument("--providers", choices=["auto", "cpu", "cuda"], help="ONNX Runtime providers")
    w.add_argument("--require-gpu", action="store_true", help="fail at start unless CUDA is active")
    w.add_argument("--processes", type=int, default=1, help="score processes in the same consumer group (default 1)")
    w.add_argument("--restart-delay", type=float, default=10.0,
                   help="with --processes: restart an exited process after S seconds (0: never; default 10)")
    w.set_defaults(func=cmd_worker)
