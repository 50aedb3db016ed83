"""JSON logs: one object per line, audit fields as fields, exceptions included, nothing else invented."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from driftline.streams.logformat import JsonFormatter
from driftline.streams.settings import REPO_ROOT


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("driftline.streams.app.control", logging.INFO, __file__, 1, "deployment applied: %s",
                            ("fraud: champion v2",), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_an_audit_event_is_one_json_object_with_its_fields() -> None:
    line = JsonFormatter().format(record(event="deployment_applied", model="fraud", version="2", actor="ana@ops",
                                         reason="recall up"))
    got = json.loads(line)
    assert "\n" not in line
    assert got["message"] == "deployment applied: fraud: champion v2" and got["level"] == "info"
    assert {k: got[k] for k in ("event", "model", "version", "actor", "reason")} == {
        "event": "deployment_applied", "model": "fraud", "version": "2", "actor": "ana@ops", "reason": "recall up"}
    assert got["time"].endswith("+00:00") and got["logger"] == "driftline.streams.app.control"
    assert set(json.loads(JsonFormatter().format(record()))) == {"time", "level", "logger", "message"}


def test_an_exception_stays_inside_its_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record()
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_the_flag_makes_every_line_json_including_the_command_s_own() -> None:
    done = subprocess.run([sys.executable, "-m", "driftline.streams.cli", "--log-format", "json", "--log-level",
                           "info", "schemas", "register"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "DRIFTLINE_SCHEMA_REGISTRY__URL": "http://127.0.0.1:1/x",
                               "DRIFTLINE_OTHER": "1"})
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("driftline: ")]
    assert lines and all(json.loads(ln)["level"] for ln in lines), done.stderr  # the unknown-variable warning
    assert done.stderr.strip().splitlines()[-1].startswith("driftline: schema registry at")
