"""Versioned model directory: ``MODEL_DIR/<name>/<version>/{model.onnx, manifest.json}``."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from driftline.inference.errors import ModelError

# Fields a registration computes; a template's values for them are ignored.
_COMPUTED = ("name", "version", "sha256", "created_at", "code_version", "training_data", "metrics")


#: a model name or version: a plain directory name (no separators, no leading dot, so no ``..``), as settings allow
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_plain_name(value: object) -> bool:
    """Whether ``value`` may name a model or a version (see :func:`check_name`)."""
    return isinstance(value, str) and _PLAIN.fullmatch(value) is not None


def check_name(what: str, value: object) -> str:
    """``value`` when it is a plain model name or version; :class:`ModelError` otherwise.

    Names reach the registry from the command line, the control topic, the
    sketches topic and retrain requests: none of them may point outside
    ``model_dir``.
    """
    if not isinstance(value, str) or not is_plain_name(value):
        raise ModelError(f"{what} {str(value)[:80]!r} is not a valid name: letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit, at most 128 characters")
    return value


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


class ModelRegistry:
    """Finds model versions on disk; versions are immutable once written."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def versions(self, name: str) -> list[str]:
        base = self.root / check_name("model name", name)
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if not p.name.startswith(".") and (p / "manifest.json").is_file()]
        return sorted(found, key=_version_key)

    def path(self, name: str, version: str | None = None) -> Path:
        """Directory of a version; the highest one when ``version`` is None or 'latest'."""
        versions = self.versions(name)
        if not versions:
            raise ModelError(
                f"no versions of model {name!r} under {self.root}; set model_dir or register the model"
            )
        if version in (None, "latest"):
            return self._inside(self.root / name / versions[-1])
        check_name("model version", version)
        if version not in versions:
            raise ModelError(f"model {name!r} has no version {version!r} (has {', '.join(versions)})")
        return self._inside(self.root / name / str(version))

    def _inside(self, path: Path) -> Path:
        """``path``, unless a symbolic link takes it, or a file in it, out of the registry."""
        root = self.root.resolve()
        for p in (path, *(path / name for name in ("model.onnx", "manifest.json", "profile.json", "manifest.sig"))):
            if p.exists() and not p.resolve().is_relative_to(root):
                raise ModelError(f"{p} leads outside the model directory {self.root} (a symbolic link?); "
                                 "copy the version into the registry instead")
        return path


def write_version(
    root: Path | str, onnx_bytes: bytes, manifest: dict[str, object], *, extra_files: dict[str, bytes] | None = None
) -> Path:
    """Write a new immutable version directory; the sha256 is computed here.

    ``manifest`` must name ``name`` and ``version``. An existing version is
    never overwritten: register a new version instead.
    """
    from driftline.inference.manifest import MANIFEST, MODEL_FILE, Manifest

    target = Path(root) / check_name("model name", manifest["name"]) / check_name("model version", manifest["version"])
    if target.exists():
        raise ModelError(f"{target} already exists; versions are immutable, pick a new version")
    full = {**manifest, "sha256": hashlib.sha256(onnx_bytes).hexdigest()}
    Manifest.from_dict(full, str(target / MANIFEST))  # refuse a manifest we could not serve
    target.mkdir(parents=True)
    (target / MODEL_FILE).write_bytes(onnx_bytes)
    for name, data in (extra_files or {}).items():
        (target / name).write_bytes(data)
    (target / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")
    return target


def register_version(
    root: Path | str, onnx_file: Path, template: Mapping[str, Any], *, name: str, version: str, created_at: datetime,
    code_version: str, metrics: Mapping[str, float] | None = None, training_data: Mapping[str, Any] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Register ``onnx_file`` as ``name`` v``version``: hash, manifest, checks, then one atomic rename.

    ``template`` gives what the file means (task, features and encodings,
    request schema, ONNX input/output names, threshold, labels), usually the
    manifest of an earlier version. The version is written to a staging
    directory and opened with ONNX Runtime there, so an ONNX file whose
    inputs do not match the declared features is refused before anyone can
    deploy it; ``finish`` may add files (the reference profile) before the
    rename makes the version visible.
    """
    from driftline.inference.manifest import MANIFEST, MODEL_FILE
    from driftline.inference.model import OnnxModel

    base = Path(root) / check_name("model name", name)
    check_name("model version", version)
    target = base / version
    if target.exists():
        raise ModelError(f"{target} already exists; versions are immutable, pick a new version")
    data = onnx_file.read_bytes()
    manifest = {k: v for k, v in template.items() if k not in _COMPUTED}
    manifest = {
        "name": name, "version": version, **manifest, "sha256": hashlib.sha256(data).hexdigest(),
        "created_at": created_at.isoformat(timespec="seconds"), "code_version": code_version,
        "training_data": dict(training_data or {}), "metrics": dict(metrics or {}),
    }
    staging = base / f".staging-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        (staging / MODEL_FILE).write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        model = OnnxModel(staging, providers="cpu")
        model.load()  # hash, input name and width against the declared features, output name
        model.unload()
        if finish is not None:
            finish(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
