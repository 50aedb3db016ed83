"""``driftline profile build``: the reference profile of a model version from its training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detectors.profile import CategoricalReference, NumericReference, Reference, ReferenceProfile
from inference.model import OnnxModel
from schemas.catalog import SchemaCatalog
from schemas.columnar import columns_from_records, flat_fields
from schemas.errors import SchemaError
from schemas.profile import NumericFeature
from schemas.validation import Validator
from streams.errors import ConfigError
from streams.records import coerce, read_input

PROFILE_FILE = "profile.json"


def build_profile(model_dir: Path, data: Path, catalog: SchemaCatalog, *, force: bool = False) -> tuple[Path, int]:
    """Write ``profile.json`` into a model version from a JSON-lines or CSV file of requests.

    Only rows that pass the model's validation are used, and the score
    reference comes from running the model on them. Returns the path and the
    number of rows used.
    """
    target = model_dir / PROFILE_FILE
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; a version's profile is fixed once written (use --force to rebuild)")
    model = OnnxModel(model_dir, providers="cpu")
    model.load()
    manifest = model.manifest
    schema = catalog.latest(manifest.request_subject)
    fields = flat_fields(schema.raw, skip_others=True)
    if not fields:
        raise SchemaError(f"{schema.subject} has no primitive fields")
    records = [coerce(schema, row) for _, row in read_input(data)]
    cols = columns_from_records(records, fields)
    checked = Validator(manifest.profile, schema).validate(cols)
    if len(checked.rows) == 0:
        raise ConfigError(f"{data}: no row passes the model's validation; is it the training data?")
    good = cols.take(checked.rows)
    scores = model.predict(checked.matrix)
    refs: list[Reference] = []
    for f in manifest.profile.features:
        nulls = good.null_mask(f.name)
        if isinstance(f, NumericFeature):
            refs.append(NumericReference.build(f.name, good.values[f.name].astype(np.float64), nulls))
        else:
            refs.append(CategoricalReference.build(f.name, good.values[f.name], f.categories, nulls))
    ReferenceProfile(tuple(refs), NumericReference.build("score", scores)).save(target)
    return target, len(checked.rows)
