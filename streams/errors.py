"""Errors of the streaming layer."""

from driftline.schemas.errors import DriftlineError


class ConfigError(DriftlineError):
    """A setting is missing or wrong; the message names it and says what to fix."""


class BrokerError(DriftlineError):
    """The broker cannot be started, reached or used."""


class DeliveryError(DriftlineError):
    """Outputs of a batch were not acknowledged; its offsets must not be committed."""


class NotFound(DriftlineError):
    """What a command was asked to show is not there (a request id on a topic); the message says where it looked."""
