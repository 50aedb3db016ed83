"""Error family of driftline's pure libraries.

``DriftlineError`` is the base of every error driftline raises on purpose;
each layer has its own subclass so callers can catch one layer at a time.
"""

from __future__ import annotations


class DriftlineError(Exception):
    """Base of all driftline errors. The message says what happened and what to do."""


class SchemaError(DriftlineError):
    """A schema file, schema id or schema change is not usable."""


class SchemaUnavailable(SchemaError):
    """The Schema Registry could not be asked about an id: the record may be fine, so it is not called malformed."""


class ProfileError(DriftlineError):
    """A model's input profile is inconsistent with its request schema."""
