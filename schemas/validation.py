"""Record validation against a model's input profile, one vectorised pass per batch.

Decoded records go in; one float32 feature matrix for the valid rows and a
:class:`~schemas.codec.Failure` for each invalid row come out. Checks run per
column with numpy; the first failing check of a row names its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.catalog import WireSchema
from schemas.codec import Failure
from schemas.profile import CategoricalFeature, InputProfile, NumericFeature, _base_type, is_nullable

#: Reason codes, in the order rows are checked. Index 0 means valid.
REASONS: tuple[str, ...] = (
    "",
    "missing_id",
    "string_too_long",
    "null_value",
    "not_a_number",
    "non_finite",
    "out_of_range",
    "unknown_category",
)
_CODE = {name: i for i, name in enumerate(REASONS)}


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    """Valid rows as one matrix; ``rows`` are their positions in the input records."""

    matrix: np.ndarray
    rows: np.ndarray
    failures: list[Failure]


class Validator:
    """Turns decoded records of one reader schema into a model's feature matrix.

    Examples
    --------
    >>> from schemas.catalog import SchemaCatalog, builtin_schema_dir
    >>> schema = SchemaCatalog.from_dirs([builtin_schema_dir()]).latest("driftline.examples.CardTransaction")
    >>> profile = InputProfile((NumericFeature("amount", 0.0, 1e5),), key_field="card_id")
    >>> v = Validator(profile, schema)
    >>> out = v.validate([{"request_id": "a", "card_id": "c", "amount": 12.5},
    ...                   {"request_id": "b", "card_id": "c", "amount": -1.0}])
    >>> out.matrix.tolist(), out.rows.tolist(), out.failures[0].reason
    ([[12.5]], [0], 'out_of_range')
    """

    def __init__(self, profile: InputProfile, reader: WireSchema) -> None:
        profile.check_against(reader)
        self.profile = profile
        types = reader.field_types
        self._nullable = {name: is_nullable(t) for name, t in types.items()}
        self._string_fields = [n for n, t in types.items() if _base_type(t) == "string"]
        self._luts = {
            f.name: {c: i for i, c in enumerate(f.categories)}
            for f in profile.features
            if isinstance(f, CategoricalFeature)
        }

    def validate(self, records: Sequence[dict[str, Any]]) -> ValidatedBatch:
        n = len(records)
        profile = self.profile
        reason = np.zeros(n, dtype=np.int8)
        culprit = np.full(n, "", dtype=object)
        matrix = np.zeros((n, profile.width), dtype=np.float32)

        def mark(mask: np.ndarray, code: str, name: str) -> None:
            hit = mask & (reason == 0)
            if hit.any():
                reason[hit] = _CODE[code]
                culprit[hit] = name

        ids = [r[profile.id_field] for r in records]
        mark(np.fromiter((not v for v in ids), dtype=bool, count=n), "missing_id", profile.id_field)
        limit = profile.max_string_length
        for name in self._string_fields:
            lengths = np.fromiter(
                (len(v) if (v := r.get(name)) is not None else 0 for r in records), dtype=np.int64, count=n
            )
            mark(lengths > limit, "string_too_long", name)

        col = 0
        for f in profile.features:
            values = [r[f.name] for r in records]
            null = (
                np.fromiter((v is None for v in values), dtype=bool, count=n)
                if self._nullable.get(f.name)
                else np.zeros(n, dtype=bool)
            )
            if isinstance(f, NumericFeature):
                x = np.array(values, dtype=np.float64)
                nan = np.isnan(x) & ~null
                inf = np.isinf(x)
                if not f.allow_missing:
                    mark(null, "null_value", f.name)
                    mark(nan, "not_a_number", f.name)
                mark(inf, "non_finite", f.name)
                missing = null | nan
                with np.errstate(invalid="ignore"):
                    mark(~missing & ~inf & ((x < f.minimum) | (x > f.maximum)), "out_of_range", f.name)
                x[missing] = f.impute
                matrix[:, col] = x
            else:
                lut = self._luts[f.name]
                idx = np.fromiter((lut.get(v, -1) for v in values), dtype=np.int64, count=n)
                mark(null, "null_value", f.name)
                mark((idx < 0) & ~null, "unknown_category", f.name)
                known = idx >= 0
                if f.encoding == "onehot":
                    rows = np.flatnonzero(known)
                    matrix[rows, col + idx[rows]] = 1.0
                else:
                    matrix[:, col] = np.where(known, idx, -1)
            col += f.width

        valid = reason == 0
        rows = np.flatnonzero(valid)
        failures = [
            self._failure(i, REASONS[reason[i]], str(culprit[i]), records[i])
            for i in np.flatnonzero(~valid).tolist()
        ]
        return ValidatedBatch(matrix[rows], rows, failures)

    def _failure(self, index: int, reason: str, name: str, record: dict[str, Any]) -> Failure:
        value = record.get(name)
        shown = repr(value) if not isinstance(value, str) else repr(value[:40]) + (
            f"... ({len(value)} chars)" if len(value) > 40 else ""
        )
        spec = next((f for f in self.profile.features if f.name == name), None)
        if reason == "out_of_range" and isinstance(spec, NumericFeature):
            text = f"{name} = {shown} is outside the allowed range [{spec.minimum}, {spec.maximum}]"
        elif reason == "unknown_category" and isinstance(spec, CategoricalFeature):
            text = f"{name} = {shown} is not a known category ({len(spec.categories)} known)"
        elif reason == "string_too_long":
            text = f"{name} is longer than max_string_length={self.profile.max_string_length}: {shown}"
        elif reason == "missing_id":
            text = f"{name} is empty; every request needs an id"
        else:
            text = f"{name} = {shown}: {reason.replace('_', ' ')} and the model does not accept missing values"
            if reason == "non_finite":
                text = f"{name} = {shown} is not finite"
        return Failure(int(index), "validate", reason, text)
