"""Signed model versions: a worker with the public key loads only versions its private key signed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from driftline.inference.errors import ModelError
from driftline.inference.registry import ModelRegistry
from driftline.inference.signing import SIGNATURE_FILE, generate_keys, sign_version
from driftline.streams.app.rollout import ModelLoader
from driftline.streams.cli.main import main as cli
from driftline.streams.settings import EXAMPLE_MODELS


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    generate_keys(tmp_path / "sign.key", tmp_path / "sign.pub")
    return tmp_path / "sign.key", tmp_path / "sign.pub"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    shutil.copytree(EXAMPLE_MODELS / "fraud", tmp_path / "models" / "fraud")
    return ModelRegistry(tmp_path / "models")


def loader(registry: ModelRegistry, public: Path | None) -> ModelLoader:
    return ModelLoader(registry, providers="cpu", intra_op_threads=1,
                       verify_key=public.read_bytes() if public else None)


def test_a_signed_version_loads_and_an_unsigned_one_is_refused(registry: ModelRegistry,
                                                               keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert private.stat().st_mode & 0o077 == 0  # the private key is its owner's only
    with pytest.raises(ModelError, match="is not signed"):
        loader(registry, public).load("fraud", "1")
    assert loader(registry, None).load("fraud", "1").ready  # without a verify key: the sha256 check only
    sign_version(registry.path("fraud", "1"), private.read_bytes())
    assert loader(registry, public).load("fraud", "1").ready


@pytest.mark.parametrize("tamper", ["manifest", "profile", "signature", "other key"])
def test_a_changed_version_or_another_signer_is_refused(registry: ModelRegistry, keys: tuple[Path, Path],
                                                       tmp_path: Path, tamper: str) -> None:
    private, public = keys
    version = registry.path("fraud", "1")
    sign_version(version, private.read_bytes())
    if tamper == "manifest":  # a lower threshold, sha256 untouched: integrity checks would pass
        manifest = json.loads((version / "manifest.json").read_text())
        manifest["threshold"] = 0.01
        (version / "manifest.json").write_text(json.dumps(manifest))
    elif tamper == "profile":
        (version / "profile.json").write_text((version / "profile.json").read_text() + " ")
    elif tamper == "signature":
        (version / SIGNATURE_FILE).write_text("AAAA\n")
    else:
        generate_keys(tmp_path / "other.key", tmp_path / "other.pub")
        sign_version(version, (tmp_path / "other.key").read_bytes())
    with pytest.raises(ModelError, match="signature does not match"):
        loader(registry, public).load("fraud", "1")


def test_register_signs_with_the_key_and_sign_signs_an_existing_version(registry: ModelRegistry,
                                                                       keys: tuple[Path, Path]) -> None:
    private, public = keys
    onnx = str(registry.path("fraud", "1") / "model.onnx")
    assert cli(["model", "register", onnx, "--name", "fraud", "--version", "2", "--model-dir", str(registry.root),
                "--sign-key", str(private)]) == 0
    assert loader(registry, public).load("fraud", "2").ready
    assert cli(["model", "sign", "fraud", "1", "--key", str(private), "--model-dir", str(registry.root)]) == 0
    assert loader(registry, public).load("fraud", "1").ready
    with pytest.raises(ModelError, match="exists"):
        generate_keys(private, public)  # keys are never overwritten
