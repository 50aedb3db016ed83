"""The pure libraries never import Kafka, Faust or Prometheus; commands other than the worker import no Faust."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"faust", "aiokafka", "confluent_kafka", "prometheus_client", "mode", "streams"}


@pytest.mark.parametrize("package", ["schemas", "inference", "detectors"])
def test_no_forbidden_imports_in_source(package: str) -> None:
    for file in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{file.name} imports {name}"


def test_importing_the_libraries_loads_no_kafka_module() -> None:
    code = (
        "import sys, json, schemas, inference, detectors; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert not loaded & FORBIDDEN
    assert "onnxruntime" not in loaded  # heavy work waits for load()


# Every module a command other than `driftline worker` imports, at module level or inside its function.
COMMAND_MODULES = ("streams.cli", "streams.demo", "streams.supervisor", "streams.kafka", "streams.records",
                   "streams.profiling", "streams.alerts", "streams.poison", "streams.report", "streams.status",
                   "streams.trainer", "streams.model_cli", "streams.catalog")


def test_commands_that_run_no_worker_import_no_faust() -> None:
    """`driftline --help`, `tail`, `alerts`, `status`, `report`, `trainer`, `model …` start without Faust.

    Faust (with aiokafka and mode) is most of a command's start-up time; only
    the worker needs it. Measured here as the modules loaded, not as a time.
    """
    code = (
        "import sys, json, importlib\n"
        f"for m in {COMMAND_MODULES!r}: importlib.import_module(m)\n"
        "from streams.cli import build_parser\n"
        "try:\n    build_parser().parse_args(['tail', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & {"faust", "aiokafka", "mode"}
    body = (ROOT / "streams" / "cli.py").read_text()
    lazy = {n.module for n in ast.walk(ast.parse(body)) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in lazy if m.startswith("streams.")} - set(COMMAND_MODULES) <= {"streams.worker", "streams.errors",
                                                                                      "streams.settings"}
