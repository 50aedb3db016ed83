"""The ``driftline`` command, one module per command group.

Commands other than ``driftline worker`` import no Faust (start-up time): the
worker is imported inside that command only. May import every other room.
"""

from driftline.streams.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
