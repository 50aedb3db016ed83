"""``driftline worker --processes N``: N score processes in one consumer group on one machine.

Python scores on one core per process (the GIL), so one machine scales the
way a cluster does: more members of the same consumer group, the partitions
spread over them, a dead member's partitions taken over by the others after
the session timeout. Each child is a plain ``driftline worker`` with its own
web port (``web_port + i``) and data directory. A child that exits is
started again after ``restart_delay_s`` (0: never); SIGTERM and Ctrl-C go to
every child, and the supervisor exits when all have stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from driftline.streams.settings import Settings

log = logging.getLogger(__name__)


def child_env(settings: Settings, index: int) -> dict[str, str]:
    return {
        **os.environ,
        "DRIFTLINE_WEB_PORT": str(settings.web_port + index),
        "DRIFTLINE_DATA_DIR": str(Path(settings.data_dir) / f"worker-{index}"),
        "DRIFTLINE_PROCESS_INDEX": str(index),
    }


def supervise(settings: Settings, processes: int, argv: list[str], restart_delay_s: float = 10.0) -> int:
    """Run ``processes`` children of ``driftline worker <argv>``; returns the worst exit code seen."""
    cmd = [sys.executable, "-m", "driftline.streams.cli", "worker", *argv]
    children: dict[int, subprocess.Popen[bytes]] = {}
    dead_since: dict[int, float] = {}
    worst = 0
    stopping = False

    def start(i: int) -> None:
        children[i] = subprocess.Popen(cmd, env=child_env(settings, i))  # noqa: S603 - our own CLI
        log.info("started score process %d (pid %d, web port %d)", i, children[i].pid, settings.web_port + i)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(processes):
        start(i)
    while True:
        for i, proc in list(children.items()):
            code = proc.poll()
            if code is None or i in dead_since:
                continue
            worst = max(worst, abs(code))
            dead_since[i] = time.monotonic()
            if not stopping:
                log.warning("score process %d (pid %d) exited with %d; %s", i, proc.pid, code,
                            f"restarting in {restart_delay_s:g}s" if restart_delay_s > 0 else "not restarting")
        if stopping or not restart_delay_s:
            if all(p.poll() is not None for p in children.values()):
                return worst if stopping else max(worst, 1)
        else:
            for i, since in list(dead_since.items()):
                if time.monotonic() - since >= restart_delay_s:
                    del dead_since[i]
                    start(i)
        time.sleep(0.2)
