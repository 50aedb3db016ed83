"""Avro schemas, the Confluent wire-format codec and record validation.

Pure library: numpy and fastavro only, no Kafka, no global state.
"""

from schemas.catalog import SchemaCatalog, WireSchema, builtin_schema_dir, schema_id
from schemas.codec import BatchDecoder, DecodedBatch, Failure, decode, encode, encode_many, frame
from schemas.errors import DriftlineError, ProfileError, SchemaError
from schemas.profile import CategoricalFeature, InputProfile, NumericFeature
from schemas.validation import REASONS, ValidatedBatch, Validator

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
    "ValidatedBatch",
    "Validator",
    "WireSchema",
    "builtin_schema_dir",
    "decode",
    "encode",
    "encode_many",
    "frame",
    "schema_id",
]
