"""The wheel installs one import package, ``driftline``, with the four folders and the example mapped inside it.

Installed into a virtual environment of its own (tests/wheels.py), the wheel
alone runs ``driftline example``, and its default settings find the bundled
model; ``driftline up`` from the wheel is tests/integration/test_wheel_up.py.
"""

from __future__ import annotations

import email
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.wheels import ROOT, WheelEnv, build_wheel, install_wheel

APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"  # apache.org's LICENSE-2.0.txt


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    return install_wheel(wheel, tmp_path_factory.mktemp("venv") / "venv")


def test_the_wheel_has_one_top_level_package_named_after_the_distribution(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"driftline"}
    tracked = {
        f"driftline/{path.relative_to(ROOT)}"
        for package in ("schemas", "inference", "detectors", "streams", "examples")
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        and path.suffix not in (".c", ".pyx", ".so")  # the compiled codec: its build, not its sources, is shipped
    }
    missing = sorted(tracked - set(names))
    from driftline.schemas import columnar

    if "compiled" in columnar.IMPLEMENTATIONS:  # built here, so built into the wheel too
        assert any(n.startswith("driftline/schemas/_ccolumnar") and n.endswith(".so") for n in names)
    assert not missing, f"files of the top folders not in the wheel (a room missing in pyproject?): {missing}"
    assert {"driftline/examples/models/fraud/1/model.onnx", "driftline/examples/fraud/generator.py"} <= set(names)
    assert "driftline/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "driftline = driftline.streams.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def metadata(wheel: Path) -> email.message.Message:
    z = zipfile.ZipFile(wheel)
    return email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))


def runtimes(meta: email.message.Message, extras: set[str]) -> set[str]:
    """The ONNX Runtime distributions ``pip install 'driftline[extras]'`` pulls (driftline[...] followed)."""
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    wanted, seen, out = set(extras), set[str](), set[str]()
    while wanted - seen:
        extra = (wanted - seen).pop()
        seen.add(extra)
        for r in reqs:
            if r.marker is not None and not r.marker.evaluate({"extra": extra}):
                continue
            if r.marker is None and extra != "":
                continue  # base requirements are counted once, under ""
            if r.name == "driftline":
                wanted |= r.extras
            elif r.name.startswith("onnxruntime"):
                out.add(r.name)
    return out


def test_license_and_one_onnx_runtime_per_extra(wheel: Path) -> None:
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256
    meta = metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("License-File") == ["LICENSE"]
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert runtimes(meta, {""}) == set()  # the base install: pick a runtime with an extra
    assert runtimes(meta, {"", "cpu"}) == {"onnxruntime"}
    assert runtimes(meta, {"", "gpu"}) == {"onnxruntime-gpu"}  # not both: both install the onnxruntime module
    assert runtimes(meta, {"", "test"}) == {"onnxruntime"}  # `make test` on a CPU machine
    assert runtimes(meta, {"", "embedded", "train"}) == set()


def run(env: WheelEnv, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env.driftline), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env.env(cwd))


SCORE = """
import importlib.util, json, sys
from pathlib import Path
import numpy as np
import driftline
from driftline.inference.registry import ModelRegistry
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
from driftline.schemas.codec import encode_many
from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
from driftline.streams.settings import Settings

root = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("gen", root / "fraud" / "generator.py")
gen = importlib.util.module_from_spec(spec); sys.modules["gen"] = gen; spec.loader.exec_module(gen)
registry = ModelRegistry(root / "models")
model = OnnxModel(registry.path("fraud", "latest"), providers="cpu"); model.load()
catalog = SchemaCatalog.from_dirs([builtin_schema_dir(), root / "schemas"])
subject = model.manifest.raw["request"]["subject"]
records, _ = gen.generate(300, np.random.default_rng(5))
values = encode_many(catalog.latest(subject), records)
pipe = ScorePipeline({"req": ServedModel(model, catalog, max_message_bytes=8192)},
                     catalog.latest("driftline.Prediction"), predictions_topic="p", deadletter_topic="d",
                     deadletter_max_bytes=8192)
out = pipe.process([RawMessage("req", 0, i, None, v) for i, v in enumerate(values)], 1767225600000)
default = Settings().model_dir
print(json.dumps({"driftline": driftline.__file__, "predictions": len(out.predictions),
                  "deadletters": len(out.deadletters), "subject": subject,
                  "default_models": str(default), "default_has_fraud": ModelRegistry(default).versions("fraud")}))
"""


def test_driftline_example_from_the_installed_wheel_writes_a_registry_that_scores(
    installed: WheelEnv, tmp_path: Path
) -> None:
    done = run(installed, tmp_path, "example", "demo")
    assert done.returncode == 0, done.stderr
    assert "DRIFTLINE_MODEL_DIR=demo/models driftline worker" in done.stdout
    demo = tmp_path / "demo"
    assert sorted(p.name for p in (demo / "models" / "fraud" / "1").iterdir()) == \
        ["manifest.json", "model.onnx", "profile.json"]
    assert sorted(p.name for p in (demo / "schemas").iterdir()) == ["card_transaction.v1.avsc",
                                                                   "card_transaction.v2.avsc"]
    scored = subprocess.run([str(installed.python), "-c", SCORE, str(demo)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=180, env=installed.env(tmp_path))
    assert scored.returncode == 0, scored.stderr[-3000:]
    got = json.loads(scored.stdout.strip().splitlines()[-1])
    assert got["driftline"].startswith(str(installed.site)), got  # the wheel's code, not the checkout's
    assert got["subject"] == "driftline.examples.CardTransaction"
    assert got["predictions"] + got["deadletters"] == 300 and got["predictions"] >= 290
    # With no DRIFTLINE_MODEL_DIR, `driftline worker` and `driftline up` serve the example the wheel carries.
    assert got["default_models"].startswith(str(installed.site)) and got["default_has_fraud"] == ["1"]

    lines = subprocess.run([str(installed.python), str(demo / "fraud" / "generator.py"), "--rows", "3"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, env=installed.env(tmp_path))
    assert lines.returncode == 0, lines.stderr
    assert len([json.loads(line)["request_id"] for line in lines.stdout.splitlines()]) == 3

    assert run(installed, tmp_path, "example", "demo").returncode == 0  # the same files again: nothing to refuse
    (demo / "models" / "fraud" / "1" / "manifest.json").write_text("{}")
    again = run(installed, tmp_path, "example", "demo")
    assert again.returncode == 2 and "exists and differs" in again.stderr and "Traceback" not in again.stderr
    assert run(installed, tmp_path, "example", "demo", "--force").returncode == 0
    assert json.loads((demo / "models" / "fraud" / "1" / "manifest.json").read_text())["name"] == "fraud"


def test_up_from_the_wheel_with_a_missing_model_dir_says_what_to_do(installed: WheelEnv, tmp_path: Path) -> None:
    env = installed.env(tmp_path, DRIFTLINE_MODEL_DIR=str(tmp_path / "nowhere"))
    up = subprocess.run([str(installed.driftline), "up", "--duration", "1"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, env=env)
    assert up.returncode == 2, up.stderr
    assert "Traceback" not in up.stderr and "driftline example DIR" in up.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_what_the_image_build_stage_copies_is_enough_to_build_the_wheel(dockerfile: str, tmp_path: Path) -> None:
    """No Docker engine here: copy what the build stage's COPY lines name, then build the wheel from that alone."""
    import shutil

    build_stage = (ROOT / "deploy" / dockerfile).read_text().split("\nFROM ")[1]  # [0]: the comments above
    copies = [line.split()[1:] for line in build_stage.splitlines() if line.startswith("COPY ") and "--" not in line]
    for args in copies:
        *sources, dest = args
        for source in sources:
            src, dst = ROOT / source, tmp_path / dest
            if src.is_dir():
                shutil.copytree(src, dst if len(sources) == 1 else dst / src.name, symlinks=True)
            else:
                target = dst / src.name if dest.endswith("/") else dst
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target)
    out = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = zipfile.ZipFile(next(out.glob("driftline-*.whl"))).namelist()
    assert "driftline/streams/cli/__init__.py" in names and "driftline/schemas/avro/alert.v1.avsc" in names
    assert "driftline/examples/models/fraud/1/model.onnx" in names  # the image runs the example by default
