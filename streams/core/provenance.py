"""Where a model version came from: the code that trained it and the data file it was profiled on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from driftline.inference.manifest import sha256_file
from driftline.streams.settings import REPO_ROOT


def code_version() -> str:
    """The driftline package version, plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("driftline")
    except PackageNotFoundError:
        text = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,  # noqa: S607
                                text=True, timeout=5, check=True).stdout.strip()
        return f"{text}+{commit}" if commit else text
    except (OSError, subprocess.SubprocessError):
        return text


def file_fingerprint(path: Path) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
