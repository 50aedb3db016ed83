"""Errors of the inference layer."""

from driftline.schemas.errors import DriftlineError


class ModelError(DriftlineError):
    """A model version cannot be loaded or used: bad hash, bad manifest, bad inputs."""


class ModelNotReady(ModelError):
    """``predict`` was called before ``load()`` succeeded."""
