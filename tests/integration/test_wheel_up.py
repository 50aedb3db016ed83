"""``driftline up`` from the installed wheel alone: the example model, generator and schemas come from it.

Builds the wheel, installs it into a virtual environment of its own
(tests/wheels.py) and runs the demo there, from an empty folder, on the
embedded broker, within a deadline.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from driftline.streams.kafka.broker import free_port
from tests.wheels import build_wheel, install_wheel

pytestmark = pytest.mark.kafka

DEADLINE_S = 240


def test_up_from_the_wheel_ends_with_its_counts(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = install_wheel(build_wheel(tmp_path_factory.mktemp("wheel")), tmp_path_factory.mktemp("venv") / "venv")
    cwd = tmp_path_factory.mktemp("user")
    where = subprocess.run([str(env.python), "-c", "import driftline; print(driftline.__file__)"], cwd=cwd,
                           capture_output=True, text=True, timeout=60, env=env.env(cwd), check=True)
    assert where.stdout.startswith(str(env.site))  # the worker and trainer it starts run this python too
    out = subprocess.run([str(env.driftline), "up", "--duration", "10", "--rate", "300"], cwd=cwd,
                         capture_output=True, text=True, timeout=DEADLINE_S,
                         env=env.env(cwd, DRIFTLINE_WEB_PORT=str(free_port())))
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in (cwd / ".driftline").glob("*.log"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:] + logs
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["driftline.requests"] >= 2000
    assert counts["driftline.predictions"] > 0 and counts["driftline.deadletter"] > 0  # the demo's bad records
    assert counts["driftline.requests"] == counts["driftline.predictions"] + counts["driftline.deadletter"]
