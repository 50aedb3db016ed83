"""The pure libraries never import Kafka, Faust or Prometheus (STYLE.md)."""

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
