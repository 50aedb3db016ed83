"""The wheel as a user gets it: built from the checkout and installed into a virtual environment of its own.

The environment takes driftline's dependencies from the test environment
(a path in a ``.pth`` file: its packages, not its ``.pth`` files, so not the
editable checkout), and driftline itself, with its ``driftline`` command,
only from the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("driftline-*.whl")
    return built


@dataclass(frozen=True)
class WheelEnv:
    root: Path
    site: Path  # where the wheel went

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def driftline(self) -> Path:
        return self.root / "bin" / "driftline"

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A clean environment: this venv first on PATH, nothing pointing at the checkout."""
        return {"PATH": f"{self.root / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                "PYTHONUNBUFFERED": "1", **extra}


def install_wheel(wheel: Path, where: Path) -> WheelEnv:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_driftline_test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return WheelEnv(where, site)
