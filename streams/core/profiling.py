"""``driftline profile build``: the reference profile of a model version from its training data."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from driftline.detectors.multivariate import PcaReference
from driftline.detectors.profile import (
    CategoricalReference,
    JointRows,
    NumericReference,
    Reference,
    ReferenceProfile,
)
from driftline.inference.errors import ModelError
from driftline.inference.manifest import Manifest
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry, is_plain_name
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.columnar import columns_from_records, flat_fields
from driftline.schemas.errors import SchemaError
from driftline.schemas.pii import personal_fields
from driftline.schemas.profile import InputProfile, NumericFeature
from driftline.schemas.validation import Validator
from driftline.streams.core.recent import RecentlyUsed
from driftline.streams.core.records import coerce, read_input
from driftline.streams.errors import ConfigError

PROFILE_FILE = "profile.json"
log = logging.getLogger(__name__)


def build_profile(model_dir: Path, data: Path, catalog: SchemaCatalog, *, force: bool = False) -> tuple[Path, int]:
    """Write ``profile.json`` into a model version from a JSON-lines or CSV file of requests.

    Only rows that pass the model's validation are used, and the score
    reference comes from running the model on them (its matrix, or its named
    inputs' columns). The feature references are built from the request
    columns, never from a model matrix. Returns the path and the number of
    rows used.
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
    checked = Validator(manifest.profile, schema, columns=bool(manifest.inputs)).validate(cols)
    if len(checked.rows) == 0:
        raise ConfigError(f"{data}: no row passes the model's validation; is it the training data?")
    good = cols.take(checked.rows)
    scores = model.predict(checked.feature_columns() if manifest.inputs else checked.matrix)
    refs: list[Reference] = []
    numeric: dict[str, np.ndarray] = {}
    whole: dict[str, np.ndarray] = {}
    for f in manifest.profile.features:
        nulls = good.null_mask(f.name)
        if isinstance(f, NumericFeature):
            values = good.values[f.name].astype(np.float64)
            refs.append(NumericReference.build(f.name, values, nulls))
            numeric[f.name] = whole[f.name] = np.where(nulls, np.nan, values) if nulls is not None else values
        else:
            refs.append(CategoricalReference.build(f.name, good.values[f.name], f.categories, nulls))
            # the rows as the model reads them: an unseen value scored as its impute category (and never kept)
            values = good.values[f.name]
            if f.unseen == "impute":
                known = set(f.categories)
                values = np.array([v if v is None or v in known else f.impute for v in values.tolist()], dtype=object)
            whole[f.name] = values
    ReferenceProfile(tuple(refs), NumericReference.build("score", scores),
                     multivariate=PcaReference.build(numeric), rows=JointRows.build(whole)).save(target)
    return target, len(checked.rows)


class ProfileStore:
    """Each model version's reference profile from the registry; None where a version has none.

    The (model, version) pairs asked for come from the sketches topic, so
    the cache is bounded: the ``max_entries`` most recently used are kept
    (misses included, so a flood of unknown names does not hit the disk
    each time); an evicted profile is read again when asked for.

    Each profile knows which of its features are personal (the version's
    manifest list, and the marks of its request schema in ``catalog``), so
    alerts and reports show their bins by number only.
    """

    def __init__(self, registry: ModelRegistry, catalog: SchemaCatalog, max_entries: int = 64) -> None:
        self.registry = registry
        self.catalog = catalog
        self._cache = RecentlyUsed[tuple[str, str], ReferenceProfile | None](max_entries)

    def get(self, model: str, version: str) -> ReferenceProfile | None:
        return self._cache.get((model, version), lambda: self._load(model, version))

    def _load(self, model: str, version: str) -> ReferenceProfile | None:
        found = None
        if is_plain_name(model) and is_plain_name(version):  # names from a topic never leave the registry
            try:
                path = self.registry.path(model, version) / PROFILE_FILE
                if path.is_file():  # the marks first: a profile whose marks cannot be read is not used (fail closed)
                    found = replace(ReferenceProfile.load(path), personal=self._personal(path.parent))
            except ModelError as exc:  # no such model or version here, or its manifest does not read
                log.debug("no reference profile for %.80r v%.80r: %s", model, version, exc)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                log.warning("the reference profile of %s v%s does not load: %s", model, version, exc)
        return found

    def _personal(self, version_dir: Path) -> frozenset[str]:
        """The version's personal features: its manifest's list and its request schema's marks; every feature
        when the schema is not in the catalog (its marks cannot be known, so nothing is shown)."""
        manifest = Manifest.read(version_dir)
        try:
            raw = self.catalog.get(manifest.request_subject).raw
        except SchemaError:
            log.warning("%s v%s reads %s, which is not in the schema catalog: all its features are treated as "
                        "personal (bins shown by number)", manifest.name, manifest.version, manifest.request_subject)
            return frozenset(f.name for f in manifest.profile.features)
        return personal_fields(raw, manifest.personal)


def has_version(registry: ModelRegistry, model: str, version: str) -> bool:
    """Whether the registry holds ``model`` v``version`` (names from a topic never leave the registry)."""
    return is_plain_name(model) and is_plain_name(version) and version in registry.versions(model)




def impute(matrix: np.ndarray, profile: InputProfile) -> np.ndarray:
    """Model input rows with their NaN (values the requests did not have) replaced as the model's validation does."""
    out = np.array(matrix, dtype=np.float32, copy=True)
    col = 0
    for f in profile.features:
        if isinstance(f, NumericFeature):
            missing = np.isnan(out[:, col])
            if missing.any():
                out[missing, col] = f.impute
        col += f.width
    return out


def profile_from_matrix(model_dir: Path, matrix: np.ndarray, scores: np.ndarray) -> Path:
    """``profile.json`` of a version from model input rows (what labeled records carry) and its scores.

    Numeric features are their matrix columns, NaN where the request had no
    value (the score path writes rows so, :meth:`ValidatedBatch.raw`): those
    count as nulls, so the profile's null rates and distributions are the
    requests', not the imputed matrix's (whose null rate reads 0 and whose
    distribution has a spike at the impute value). A one-hot categorical is
    the category of its hot column (none hot: outside the categories); an
    ordinal one is its code. The profile's joint rows are a seeded sample of
    these rows, read the same way.
    """
    from driftline.schemas.profile import CategoricalFeature

    manifest = OnnxModel(model_dir, providers="cpu").manifest
    refs: list[Reference] = []
    numeric: dict[str, np.ndarray] = {}
    whole: dict[str, np.ndarray] = {}
    col = 0
    for f in manifest.profile.features:
        if isinstance(f, CategoricalFeature):
            cats = np.array([*f.categories, "\0other"], dtype=object)
            if f.encoding == "onehot":
                block = matrix[:, col:col + len(f.categories)]
                hot = np.where(block.max(axis=1) > 0.5, block.argmax(axis=1), len(f.categories))
                col += len(f.categories)
            else:
                hot = np.clip(np.rint(matrix[:, col]).astype(np.int64), 0, len(f.categories))
                col += 1
            refs.append(CategoricalReference.build(f.name, cats[hot], f.categories))
            whole[f.name] = cats[hot]
        else:
            values = matrix[:, col].astype(np.float64)
            refs.append(NumericReference.build(f.name, values, nulls=np.isnan(values)))
            numeric[f.name] = whole[f.name] = values
            col += 1
    target = model_dir / PROFILE_FILE
    ReferenceProfile(tuple(refs), NumericReference.build("score", np.asarray(scores, dtype=np.float64)),
                     multivariate=PcaReference.build(numeric), rows=JointRows.build(whole)).save(target)
    return target
