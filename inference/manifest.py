"""The manifest of a model version: what the ONNX file is, what it reads, what it means."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from driftline.inference.errors import ModelError
from driftline.schemas.errors import ProfileError
from driftline.schemas.profile import InputProfile

Task = Literal["binary_classification", "regression"]
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"


@dataclass(frozen=True, slots=True)
class Manifest:
    """Parsed ``manifest.json``; ``raw`` keeps every field, the known ones are typed."""

    name: str
    version: str
    task: Task
    sha256: str
    request_subject: str
    profile: InputProfile
    input_name: str
    output_name: str
    output_index: int | None
    threshold: float
    labels: tuple[str, str]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "manifest") -> Manifest:
        try:
            task = raw["task"]
            if task not in ("binary_classification", "regression"):
                raise ModelError(f"{where}: task must be binary_classification or regression, not {task!r}")
            onnx = raw.get("onnx", {})
            labels = tuple(raw.get("labels", ("negative", "positive")))
            if len(labels) != 2:
                raise ModelError(f"{where}: labels must name the negative and the positive class")
            return cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                task=task,
                sha256=str(raw["sha256"]).lower(),
                request_subject=str(raw["request"]["subject"]),
                profile=InputProfile.from_manifest(raw),
                input_name=str(onnx.get("input", "features")),
                output_name=str(onnx.get("output", "probabilities" if task != "regression" else "variable")),
                output_index=onnx.get("output_index", 1 if task != "regression" else None),
                threshold=float(raw.get("threshold", 0.5)),
                labels=(str(labels[0]), str(labels[1])),
                raw=raw,
            )
        except KeyError as exc:
            raise ModelError(f"{where}: missing field {exc.args[0]!r}; see README 'Bring your own model'") from exc
        except ProfileError as exc:
            raise ModelError(f"{where}: {exc}") from exc

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"{path} is missing; a model version needs model.onnx and manifest.json") from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw, str(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_mismatch(a: Manifest, b: Manifest) -> str | None:
    """Why versions ``a`` and ``b`` cannot serve one requests topic side by side, or None.

    Variants of a model share one decode and validation pass per batch, so
    they must read the same request schema into the same feature matrix.
    """
    if a.request_subject != b.request_subject:
        return f"v{b.version} reads {b.request_subject}, v{a.version} reads {a.request_subject}"
    if a.profile != b.profile:
        return (f"v{b.version} declares other features or validation than v{a.version} "
                f"({b.profile.column_names} vs {a.profile.column_names}); register it with the same features")
    return None
