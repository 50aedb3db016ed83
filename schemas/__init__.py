"""Avro schemas, the Confluent wire-format codec and record validation.

Pure library: numpy and fastavro only, no Kafka, no global state.
"""

from driftline.schemas.catalog import (
    SchemaCatalog,
    SchemaSource,
    WireSchema,
    builtin_schema_dir,
    canonical_id,
    schema_id,
)
from driftline.schemas.codec import BatchDecoder, DecodedBatch, Failure, decode, encode, encode_many, frame
from driftline.schemas.errors import DriftlineError, ProfileError, SchemaError, SchemaUnavailable
from driftline.schemas.profile import CategoricalFeature, InputProfile, NumericFeature
from driftline.schemas.validation import REASONS, ValidatedBatch, Validator

__all__ = [
    "REASONS",
    "BatchDecoder",
    "CategoricalFeature",
    "DecodedBatch",
    "DriftlineError",
    "Failure",
    "InputProfile",
    "NumericFeature",
    "ProfileError",
    "SchemaCatalog",
    "SchemaError",
    "SchemaSource",
    "SchemaUnavailable",
    "ValidatedBatch",
    "Validator",
    "WireSchema",
    "builtin_schema_dir",
    "canonical_id",
    "decode",
    "encode",
    "encode_many",
    "frame",
    "schema_id",
]
