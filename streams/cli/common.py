"""Shared by every ``driftline`` command: settings from its flags and the ``DRIFTLINE_*`` variables."""

from __future__ import annotations

import argparse
from typing import Any, TypeAlias

from driftline.streams.settings import Settings, load_settings

# What ``add_subparsers()`` returns: each command module adds its command(s) to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def cli_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings with ``--broker`` (where the command has it) over ``DRIFTLINE_BROKER``."""
    return load_settings(broker=getattr(args, "broker", None), **extra)
