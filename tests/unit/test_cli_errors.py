"""The ``driftline`` command where something is wrong: one line saying what to fix, in bounded time, never a hang.

Settings that do not parse, a config file that is missing or not TOML, a
typo'd variable, a broker that is not there (a free port with nothing
listening), a busy web port, an unknown model; and the flags every command
has (``--version``, ``--log-level``). Behaviour against a live broker is in
tests/integration/test_cli_errors.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.streams.cli.common import CLI_BROKER_WAIT_S
from driftline.streams.kafka.broker import free_port
from driftline.streams.settings import REPO_ROOT, RepeatFilter, unknown_variables


def driftline(*args: str, env: dict[str, str] | None = None, timeout: float = 90,
              keep_env: bool = False) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real command in a clean environment (plus ``env``); its result and how long it took."""
    base = dict(os.environ) if keep_env else {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                              "HOME": os.environ.get("HOME", "/root")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "driftline.streams.cli", *args], cwd=REPO_ROOT,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def dead_broker() -> str:
    return f"127.0.0.1:{free_port()}"


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return lines[0]


# -- settings ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "wanted"), [
    ({"DRIFTLINE_MODELS": "fraud"},
     ["DRIFTLINE_MODELS", "not valid JSON", "JSON list", """DRIFTLINE_MODELS='[{"name": "fraud"}]'"""]),
    ({"DRIFTLINE_SCHEMA_DIRS": "/srv/schemas"},
     ["DRIFTLINE_SCHEMA_DIRS", "JSON list", """DRIFTLINE_SCHEMA_DIRS='["/srv/schemas"]'"""]),
    ({"DRIFTLINE_PARTITIONS": "eight"}, ["DRIFTLINE_PARTITIONS", "JSON object", "DRIFTLINE_PARTITIONS__REQUESTS"]),
], ids=["models", "schema_dirs", "partitions"])
def test_a_list_or_group_variable_that_is_not_json_is_one_line_with_the_form_it_takes(
        env: dict[str, str], wanted: list[str]) -> None:
    done, _ = driftline("topics", "create", env=env)
    assert done.returncode == 2
    line = one_line(done)
    for text in wanted:
        assert text in line, line


def test_a_config_file_that_is_not_toml_names_the_file_and_the_place(tmp_path: Path) -> None:
    config = tmp_path / "driftline.toml"
    config.write_text('namespace = "ok"\nbatch_max = \n')
    done, _ = driftline("topics", "create", env={"DRIFTLINE_CONFIG": str(config)})
    assert done.returncode == 2
    line = one_line(done)
    assert str(config) in line and "not valid TOML" in line and "line 2" in line, line


def test_a_missing_config_file_is_an_error_not_ignored(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    done, _ = driftline("topics", "create", env={"DRIFTLINE_CONFIG": str(missing)})
    assert done.returncode == 2
    line = one_line(done)
    assert f"DRIFTLINE_CONFIG={missing}" in line and "does not exist" in line, line


def test_a_typo_in_a_variable_name_is_a_warning_naming_the_setting_meant(tmp_path: Path) -> None:
    # Any command that reads the settings warns; this one stops at once after (no such model).
    done, _ = driftline("report", "--model", "frud", env={"DRIFTLINE_BATCH_MAKS": "5",
                                                          "DRIFTLINE_KAFKA_SSL_CA_FILE": "/ca.pem"})
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert any("DRIFTLINE_BATCH_MAKS" in w and "did you mean DRIFTLINE_BATCH_MAX?" in w for w in warnings), warnings
    assert any("did you mean DRIFTLINE_KAFKA__SSL_CA_FILE?" in w for w in warnings), warnings


def test_variables_that_are_not_settings_but_are_known_are_not_warned_about() -> None:
    env = {"DRIFTLINE_CONFIG": "x", "DRIFTLINE_PROCESS_INDEX": "1", "DRIFTLINE_BROKER": "b:1",
           "DRIFTLINE_KAFKA__SASL_USERNAME": "u", "driftline_batch_max": "3", "OTHER": "x"}
    assert unknown_variables(env) == []
    assert unknown_variables({"DRIFTLINE_NOTHING_LIKE_IT": "1"}) == [
        'DRIFTLINE_NOTHING_LIKE_IT is not a driftline setting and is ignored; see README "Configuration" for the '
        'settings']


# -- flags ---------------------------------------------------------------------------------------------------------

def test_version() -> None:
    from importlib.metadata import version

    done, _ = driftline("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"driftline {version('driftline')}"


def test_a_bad_log_level_is_one_line() -> None:
    done, _ = driftline("--log-level", "bogus", "topics", "create")
    assert done.returncode == 2
    line = one_line(done)
    assert "--log-level bogus" in line and "debug, info, warning, error" in line


def test_commands_log_at_warning_unless_told(tmp_path: Path) -> None:
    """`waiting for the broker` is an info line: a command does not show it by default, --log-level info does."""
    env = {"DRIFTLINE_BROKER": dead_broker(), "DRIFTLINE_BROKER_WAIT_S": "2"}
    quiet, _ = driftline("topics", "create", env=env)
    assert quiet.returncode == 1 and "waiting for the broker" not in quiet.stderr
    one_line(quiet)
    loud, _ = driftline("--log-level", "info", "topics", "create", env=env)
    assert loud.returncode == 1 and "waiting for the broker" in loud.stderr


# -- a broker that is not there ------------------------------------------------------------------------------------

def test_alerts_against_no_broker_stops_within_the_command_wait_with_one_line() -> None:
    """Before: `driftline alerts` polled for ever and printed nothing. The default wait is the command's, not 60 s."""
    broker = dead_broker()
    done, took = driftline("alerts", env={"DRIFTLINE_BROKER": broker}, timeout=60)
    assert done.returncode == 1
    line = one_line(done)
    assert line.startswith(f"driftline: cannot reach the broker at {broker} after {CLI_BROKER_WAIT_S:g}s"), line
    assert "DRIFTLINE_BROKER" in line
    assert CLI_BROKER_WAIT_S <= took < CLI_BROKER_WAIT_S + 15, took


@pytest.mark.parametrize("args", [
    ["status"], ["status", "--json"], ["report"], ["model", "promote", "fraud", "1"], ["trainer", "--once"],
    ["topics", "create"], ["alerts", "--json"], ["produce", "{input}"],
], ids=" ".join)
def test_every_command_against_no_broker_says_so_in_one_line(args: list[str], tmp_path: Path) -> None:
    """Before: tracebacks (report, model promote, trainer), "no fetch answer" (status), librdkafka's log lines."""
    data = tmp_path / "in.jsonl"
    data.write_text('{"request_id": "r1"}\n')
    broker = dead_broker()
    done, took = driftline(*[a.replace("{input}", str(data)) for a in args],
                           env={"DRIFTLINE_BROKER": broker, "DRIFTLINE_BROKER_WAIT_S": "1",
                                "DRIFTLINE_DATA_DIR": str(tmp_path)}, timeout=60)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"driftline: cannot reach the broker at {broker} after 1s"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "%3|" not in done.stderr and "FAIL" not in done.stderr
    if args[0] != "trainer":  # a service: it logs its wait at info
        one_line(done)
    assert took < 30


def test_the_worker_against_no_broker_is_a_few_lines_not_librdkafkas_hundreds(tmp_path: Path) -> None:
    done, _ = driftline("worker", env={"DRIFTLINE_BROKER": dead_broker(), "DRIFTLINE_BROKER_WAIT_S": "3",
                                       "DRIFTLINE_WEB_PORT": str(free_port()), "DRIFTLINE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("driftline: cannot reach the broker at"), lines[-3:]
    assert "%3|" not in done.stderr and len(lines) < 15, done.stderr[-3000:]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on, as another worker's web server would."""
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.bind(("0.0.0.0", 0))  # noqa: S104 - as a worker's web server binds
    other.listen()
    try:
        yield other.getsockname()[1]
    finally:
        other.close()


def test_a_worker_on_a_busy_web_port_stops_at_once_before_the_broker(busy_port: int, tmp_path: Path) -> None:
    """Before: it joined the group, took partitions for ~20 s, then died with a traceback. Now: before the broker."""
    done, took = driftline("worker", env={"DRIFTLINE_BROKER": dead_broker(), "DRIFTLINE_BROKER_WAIT_S": "60",
                                          "DRIFTLINE_WEB_PORT": str(busy_port), "DRIFTLINE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2
    line = one_line(done)
    assert line == (f"driftline: web port {busy_port} is in use: set DRIFTLINE_WEB_PORT or stop the other worker")
    assert took < 30, "it waited for the broker first"


def test_report_for_a_model_the_registry_does_not_have_names_those_it_has(tmp_path: Path) -> None:
    """Before: exit 0 and a report of nothing for `frud`."""
    done, _ = driftline("report", "--model", "frud", "--out-dir", str(tmp_path),
                        env={"DRIFTLINE_BROKER": dead_broker()})
    assert done.returncode == 2
    line = one_line(done)
    assert "--model frud" in line and "(it has: fraud)" in line, line
    assert not list(tmp_path.iterdir())


def test_produce_of_a_file_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    done, _ = driftline("produce", str(tmp_path / "missing.jsonl"), env={"DRIFTLINE_BROKER": dead_broker()})
    assert done.returncode == 2
    line = one_line(done)
    assert "missing.jsonl: no such file" in line


def test_undelivered_records_are_counted_with_librdkafkas_reason() -> None:
    """The delivery reports `driftline produce` waits for: a broker that never answers fails each record."""
    from confluent_kafka import Producer

    from driftline.streams.cli.produce import publish

    producer = Producer({"bootstrap.servers": dead_broker(), "message.timeout.ms": 1500, "log_level": 0})
    delivered, failed = publish(producer, "t", [(b"k", b"v")] * 3, timeout_s=20)
    assert delivered == 0
    assert sum(failed.values()) == 3 and any("timed out" in reason.lower() for reason in failed), failed


# -- repeated log lines --------------------------------------------------------------------------------------------

def test_repeated_lines_pass_once_a_window_and_say_how_many_were_held_back() -> None:
    now = [0.0]
    repeats = RepeatFilter(60.0, names=("aiokafka",), min_level=logging.WARNING, clock=lambda: now[0])

    def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, (), None)

    connect = "Unable connect to node with id %d: Connect call failed ('127.0.0.1', %d)"
    passed = []
    for i in range(600):  # ten a second for a minute, numbers changing
        now[0] = i / 10
        r = record("aiokafka.conn", connect % (1, 9000 + i))
        if repeats.filter(r):
            passed.append(r.getMessage())
    assert len(passed) == 1
    now[0] = 61.0
    r = record("aiokafka.conn", connect % (1, 1))
    assert repeats.filter(r) and "(repeated 599 times in the last 61s)" in r.getMessage()
    assert repeats.filter(record("aiokafka.conn", "another message"))
    assert repeats.filter(record("driftline.x", connect % (1, 1))) and repeats.filter(record("driftline.x", connect))
    assert repeats.filter(record("aiokafka.conn", connect % (1, 2), logging.INFO))  # below min_level: untouched


def test_sigterm_while_the_worker_waits_for_its_broker_stops_it_even_as_pid_1(tmp_path: Path) -> None:
    """In a container the worker is PID 1, which ignores SIGTERM unless it handles it (emulated here by starting
    it with SIGTERM ignored). Before: it went on waiting `broker_wait_s` (60 s) and Kubernetes killed it."""
    log = tmp_path / "worker.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DRIFTLINE_BROKER": dead_broker(),
           "DRIFTLINE_BROKER_WAIT_S": "120", "DRIFTLINE_WEB_PORT": str(free_port()),
           "DRIFTLINE_DATA_DIR": str(tmp_path)}
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "driftline.streams.cli", "worker"], cwd=REPO_ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while "waiting for the broker" not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert worker.wait(timeout=60) == 0
        assert time.monotonic() - stopping < 10
        assert "SIGTERM while starting: stopping" in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
