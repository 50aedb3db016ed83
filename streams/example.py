"""Access to the bundled example (``examples/fraud``) for the demo and the benchmark."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from types import ModuleType

from driftline.streams.errors import ConfigError
from driftline.streams.settings import REPO_ROOT


@cache
def fraud_generator() -> ModuleType:
    """The synthetic transaction generator, loaded from the checkout."""
    path = REPO_ROOT / "examples" / "fraud" / "generator.py"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; the demo runs from a driftline checkout")
    spec = importlib.util.spec_from_file_location("driftline_example_fraud", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module
