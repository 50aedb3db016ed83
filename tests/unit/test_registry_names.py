"""Model names and versions from any source stay inside model_dir (CLI, control topic, sketches, retrain requests)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from driftline.inference.errors import ModelError
from driftline.inference.registry import ModelRegistry, register_version
from driftline.schemas.catalog import SchemaCatalog
from driftline.streams.core.profiling import ProfileStore, has_version
from driftline.streams.settings import EXAMPLE_MODELS

BAD = ["..", "../fraud", "/etc", "fraud/1", ".hidden", "", "a" * 200, "x\0y", "fraud\\1", "é"]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    shutil.copytree(EXAMPLE_MODELS, tmp_path / "models")
    (tmp_path / "outside" / "1").mkdir(parents=True)
    shutil.copy(EXAMPLE_MODELS / "fraud" / "1" / "manifest.json", tmp_path / "outside" / "1" / "manifest.json")
    return ModelRegistry(tmp_path / "models")


@pytest.mark.parametrize("name", BAD)
def test_a_bad_model_name_is_refused_on_every_lookup(registry: ModelRegistry, name: str) -> None:
    for call in (lambda: registry.versions(name), lambda: registry.path(name), lambda: registry.path(name, "1")):
        with pytest.raises(ModelError, match="not a valid name"):
            call()


@pytest.mark.parametrize("version", [v for v in BAD if v])
def test_a_bad_version_is_refused(registry: ModelRegistry, version: str) -> None:
    with pytest.raises(ModelError, match="not a valid name"):
        registry.path("fraud", version)


def test_the_relative_path_to_a_folder_outside_is_not_followed(registry: ModelRegistry) -> None:
    """Before: ``versions("../outside")`` listed the folder beside the registry as a model."""
    assert (registry.root / ".." / "outside" / "1" / "manifest.json").is_file()
    with pytest.raises(ModelError):
        registry.versions("../outside")


def test_a_symlink_out_of_the_registry_is_refused(registry: ModelRegistry) -> None:
    (registry.root / "fraud" / "9").symlink_to(registry.root.parent / "outside" / "1")
    assert "9" in registry.versions("fraud")
    with pytest.raises(ModelError, match="outside the model directory"):
        registry.path("fraud", "9")
    (registry.root / "evil").symlink_to(registry.root.parent / "outside")
    with pytest.raises(ModelError, match="outside the model directory"):
        registry.path("evil", "1")


def test_topic_names_never_reach_the_disk(registry: ModelRegistry, catalog: SchemaCatalog) -> None:
    """Names read from the sketches topic and from retrain requests: looked up safely, never raised on."""
    profiles = ProfileStore(registry, catalog)
    for name in BAD:
        assert profiles.get(name, "1") is None and profiles.get("fraud", name) is None
        assert not has_version(registry, name, "1")


@pytest.mark.parametrize(("name", "version"), [("../x", "1"), ("fraud", "../2"), ("fraud", "/tmp/x")])
def test_registering_a_bad_name_writes_nothing(registry: ModelRegistry, tmp_path: Path, name: str,
                                               version: str) -> None:
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(ModelError, match="not a valid name"):
        register_version(registry.root, EXAMPLE_MODELS / "fraud" / "1" / "model.onnx", {}, name=name,
                         version=version, created_at=datetime.now(UTC), code_version="test")
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_trailing_newline_is_not_a_name(registry: ModelRegistry) -> None:
    with pytest.raises(ModelError, match="not a valid name"):
        registry.path("fraud\n")


def test_a_file_symlinked_out_of_a_version_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    version = registry.path("fraud", "1")
    (tmp_path / "elsewhere.onnx").write_bytes((version / "model.onnx").read_bytes())
    (version / "model.onnx").unlink()
    (version / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(ModelError, match="outside the model directory"):
        registry.path("fraud", "1")
