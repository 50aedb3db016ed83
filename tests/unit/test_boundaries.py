"""The layers hold: pure libraries import no Kafka, each room of ``driftline.streams`` imports only what its
``__init__`` allows, and commands other than the worker import no Faust."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KAFKA_AND_FAUST = {"faust", "aiokafka", "confluent_kafka", "mode"}
FAUST = {"faust", "aiokafka", "mode"}
STREAMS = "driftline.streams"


def imports(file: Path) -> Iterator[tuple[str, bool]]:
    """(module, at module level) for every import in a file."""
    tree = ast.parse(file.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, id(node) in top


def offences(folder: Path, banned_top: set[str], banned_prefixes: tuple[str, ...]) -> list[str]:
    found = []
    for file in sorted(folder.rglob("*.py")):
        for name, _ in imports(file):
            if name.split(".")[0] in banned_top or name.startswith(banned_prefixes):
                found.append(f"{file.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", ["schemas", "inference", "detectors"])
def test_pure_libraries_import_no_kafka_and_nothing_of_streams(package: str) -> None:
    assert offences(ROOT / package, KAFKA_AND_FAUST | {"prometheus_client"}, (STREAMS,)) == []


# room -> (third-party packages it may not import, rooms of driftline.streams it may not import)
ROOMS = {
    "core": (KAFKA_AND_FAUST | {"prometheus_client"},
             ("kafka", "app", "cli", "trainer", "metrics", "catalog", "example")),
    "kafka": (FAUST, ("app", "cli", "trainer", "metrics", "catalog", "example")),
    "trainer": (FAUST, ("app", "cli")),
    "app": (set(), ("cli", "trainer")),
}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_of_streams_imports_what_its_init_allows(room: str) -> None:
    banned_top, banned_rooms = ROOMS[room]
    prefixes = tuple(f"{STREAMS}.{r}" for r in banned_rooms)
    assert offences(ROOT / "streams" / room, banned_top, prefixes) == []


def test_shared_modules_of_streams_import_no_room_but_core() -> None:
    """settings, errors, catalog, metrics, example sit under every room, so they import none but the pure core."""
    rooms = tuple(f"{STREAMS}.{r}" for r in ("kafka", "app", "cli", "trainer"))
    found = [f"{f.name} imports {name}" for f in sorted((ROOT / "streams").glob("*.py"))
             for name, _ in imports(f) if name.startswith(rooms) or name.split(".")[0] in FAUST]
    assert found == []


def test_every_folder_says_what_lives_there_and_what_it_may_import() -> None:
    for init in [ROOT / "streams" / r / "__init__.py" for r in (*ROOMS, "cli")]:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(ROOT)} does not say what it may import"


def test_importing_the_libraries_loads_no_kafka_module() -> None:
    code = (
        "import sys, json, driftline.schemas, driftline.inference, driftline.detectors; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert not {m.split(".")[0] for m in loaded} & (KAFKA_AND_FAUST | {"prometheus_client"})
    assert not {m for m in loaded if m.startswith(STREAMS)}
    assert "onnxruntime" not in {m.split(".")[0] for m in loaded}  # heavy work waits for load()


def command_modules() -> list[str]:
    """Every module a command other than ``driftline worker`` may load: all but the Faust app's flows."""
    names = []
    for room in ("core", "kafka", "trainer", "cli"):
        for file in sorted((ROOT / "streams" / room).glob("*.py")):
            if file.stem != "__main__":
                names.append(f"{STREAMS}.{room}.{file.stem}".removesuffix(".__init__"))
    return [*names, f"{STREAMS}.app.supervisor", f"{STREAMS}.catalog", f"{STREAMS}.settings"]


def test_commands_that_run_no_worker_import_no_faust() -> None:
    """`driftline --help`, `tail`, `alerts`, `status`, `report`, `trainer`, `model …` start without Faust.

    Faust (with aiokafka and mode) is most of a command's start-up time; only
    the worker needs it. Measured as the modules loaded, not as a time.
    """
    modules = command_modules()
    code = (
        "import sys, json, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from driftline.streams.cli import build_parser\n"
        "try:\n    build_parser().parse_args(['tail', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & FAUST


def test_the_cli_imports_the_faust_app_only_inside_a_function() -> None:
    faust_rooms = tuple(f"{STREAMS}.app.{f.stem}" for f in (ROOT / "streams" / "app").glob("*.py")
                        if f.stem not in ("__init__", "supervisor"))
    for file in sorted((ROOT / "streams" / "cli").glob("*.py")):
        at_top = [name for name, top in imports(file) if top and name.startswith(faust_rooms)]
        assert at_top == [], f"{file.name} imports the worker at start-up: {at_top}"
