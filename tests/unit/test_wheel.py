"""The wheel installs one import package, ``driftline``, with the four folders mapped inside it and their data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (built,) = out.glob("driftline-*.whl")
    return built


def test_the_wheel_has_one_top_level_package_named_after_the_distribution(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"driftline"}
    tracked = {
        f"driftline/{path.relative_to(ROOT)}"
        for package in ("schemas", "inference", "detectors", "streams")
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    missing = sorted(tracked - set(names))
    assert not missing, f"files of the four folders not in the wheel (a room missing in pyproject?): {missing}"
    assert "driftline/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "driftline = driftline.streams.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_wheel_imports_and_finds_its_schemas(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import driftline, driftline.streams.cli\n"
        "from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir\n"
        "assert driftline.__file__.startswith(sys.argv[1]), driftline.__file__\n"
        "print(len(SchemaCatalog.from_dirs([builtin_schema_dir()]).subjects()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 6
    # `driftline up` runs the bundled example, which the wheel does not carry: one line, no traceback.
    up = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                         "from driftline.streams.cli import main; sys.exit(main(['up', '--duration', '1']))",
                         str(target)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert up.returncode == 2, up.stderr
    assert "Traceback" not in up.stderr and "run it from a checkout" in up.stderr


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
