"""The ``driftline`` command, one module per command group.

Each command's flags and ``cmd_*`` function are in the module named after it
(``alerts.py`` for ``driftline alerts``; ``up.py`` for ``up``, whose demo is
``demo.py``; ``report_command.py`` for ``report``, whose report is
``report.py``); ``main.py`` builds the parser from them and maps errors to
exit codes.

Commands other than ``driftline worker`` import no Faust (start-up time): the
worker is imported inside that command only. May import every other room.
"""

from driftline.streams.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
