"""``driftline profile build``: a model version's reference profile for drift detection."""

from __future__ import annotations

import argparse
from pathlib import Path

from driftline.streams.cli.common import Subcommands, cli_settings


def cmd_profile_build(args: argparse.Namespace) -> int:
    from driftline.inference.registry import ModelRegistry
    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.profiling import build_profile

    settings = cli_settings(args)
    version_dir = ModelRegistry(args.model_dir or settings.model_dir).path(args.name, args.version)
    target, rows = build_profile(version_dir, Path(args.data), build_catalog(settings), force=args.force)
    print(f"wrote {target} from {rows} valid rows of {args.data}")
    return 0


def add_profile_commands(sub: Subcommands) -> None:
    prof = sub.add_parser("profile", help="reference profiles for drift detection")
    psub = prof.add_subparsers(dest="profile_command", required=True)
    pb = psub.add_parser("build", help="write profile.json into a model version from its training data")
    pb.add_argument("name", help="the model")
    pb.add_argument("version", nargs="?", default="latest", help="its version (default: the latest)")
    pb.add_argument("--data", required=True, help="training requests, JSON lines or CSV")
    pb.add_argument("--model-dir", help="registry root (DRIFTLINE_MODEL_DIR), as for every other command")
    pb.add_argument("--force", action="store_true", help="replace an existing profile.json")
    pb.set_defaults(func=cmd_profile_build)
