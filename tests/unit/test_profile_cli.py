"""`driftline profile build NAME [VERSION]`: `--model-dir` is the registry root, as for every other command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.profile import ReferenceProfile
from driftline.streams.cli.main import main
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.settings import EXAMPLE_MODELS


def test_profile_build_finds_the_version_in_the_registry(tmp_path: Path, generator,  # type: ignore[no-untyped-def]
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "models"
    shutil.copytree(EXAMPLE_MODELS / "fraud" / "1", registry / "fraud" / "1")
    (registry / "fraud" / "1" / PROFILE_FILE).unlink()
    records, _ = generator.generate(3_000, np.random.default_rng(4))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["profile", "build", "fraud", "--data", str(data), "--model-dir", str(registry)]) == 0
    written = ReferenceProfile.load(registry / "fraud" / "1" / PROFILE_FILE)
    assert written.features and "wrote" in capsys.readouterr().out
    assert main(["profile", "build", "fraud", "1", "--data", str(data), "--model-dir", str(registry)]) == 2
    assert "exists" in capsys.readouterr().err  # a version's profile is fixed once written
    assert main(["profile", "build", "frud", "--data", str(data), "--model-dir", str(registry)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no versions of model 'frud'" in err[0]
