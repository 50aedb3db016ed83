"""Versioned model directory: ``MODEL_DIR/<name>/<version>/{model.onnx, manifest.json}``."""

from __future__ import annotations

from pathlib import Path

from inference.errors import ModelError


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
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if (p / "manifest.json").is_file()]
        return sorted(found, key=_version_key)

    def path(self, name: str, version: str | None = None) -> Path:
        """Directory of a version; the highest one when ``version`` is None or 'latest'."""
        versions = self.versions(name)
        if not versions:
            raise ModelError(
                f"no versions of model {name!r} under {self.root}; set model_dir or register the model"
            )
        if version in (None, "latest"):
            return self.root / name / versions[-1]
        if version not in versions:
            raise ModelError(f"model {name!r} has no version {version!r} (has {', '.join(versions)})")
        return self.root / name / str(version)


def write_version(
    root: Path | str, onnx_bytes: bytes, manifest: dict[str, object], *, extra_files: dict[str, bytes] | None = None
) -> Path:
    """Write a new immutable version directory; the sha256 is computed here.

    ``manifest`` must name ``name`` and ``version``. An existing version is
    never overwritten: register a new version instead.
    """
    import hashlib
    import json

    from inference.manifest import MANIFEST, MODEL_FILE, Manifest

    target = Path(root) / str(manifest["name"]) / str(manifest["version"])
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
