"""Record validation against a model's input profile, one vectorised pass per batch.

Decoded columns go in; one float32 feature matrix for the valid rows and a
:class:`~driftline.schemas.codec.Failure` for each invalid row come out (and,
when a model reads named inputs, each feature's column of valid values too).
Checks run per column with numpy; the first failing check of a row names its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, TypeAlias

import numpy as np

from driftline.schemas.catalog import WireSchema
from driftline.schemas.codec import Failure
from driftline.schemas.columnar import Columns
from driftline.schemas.profile import CategoricalFeature, InputProfile, NumericFeature, _base_type, is_nullable

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

#: what a model reads of a batch: the float32 feature matrix, or feature name → column (named-input models)
ModelBatch: TypeAlias = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    """Valid rows as one matrix; ``rows`` are their positions in the input records."""

    matrix: np.ndarray
    rows: np.ndarray
    failures: list[Failure]
    #: per categorical feature, each input row's category index (-1: unknown or null)
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    #: per matrix column of a numeric feature that may be missing: which valid rows were imputed
    missing: dict[int, np.ndarray] = field(default_factory=dict)
    #: per feature, the valid rows' values (numeric: float64, imputed; categorical: str), when the validator
    #: was asked for them (``Validator.columns``): what a model with named inputs reads instead of the matrix
    columns: dict[str, np.ndarray] | None = None

    def feature_columns(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:attr:`columns`, or the subset ``rows`` (positions or a mask over the valid rows) of them."""
        if self.columns is None:
            raise ValueError("this batch has no feature columns: validate with Validator.columns = True")
        return self.columns if rows is None else {k: v[rows] for k, v in self.columns.items()}

    def raw(self, matrix: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``matrix`` (rows of :attr:`matrix`, or the subset ``rows`` of them) with NaN where a value was imputed.

        What the model saw is the imputed matrix; what the request held is this
        one (a reference profile built from it has the real null rates).
        """
        if not self.missing:
            return matrix
        out = np.array(matrix, dtype=np.float32, copy=True)
        for col, mask in self.missing.items():
            out[mask if rows is None else mask[rows], col] = np.nan
        return out


class _NumericBlock:
    """The numeric features of a profile, checked together as one (features × rows) array.

    Checking column by column cost ~10 numpy calls per feature whatever the
    batch's size, most of a small batch's validation; here the same checks
    are a dozen calls for all of them. Rows that fail are rare: only then
    are the failing features looked at one by one, to name the first rule
    each row breaks in the order :data:`REASONS` lists them.
    """

    def __init__(self, profile: InputProfile) -> None:
        numeric, at, col_at = [], [], 0
        for f in profile.features:
            if isinstance(f, NumericFeature):
                numeric.append(f)
                at.append(col_at)
            col_at += f.width
        self.names = tuple(f.name for f in numeric)
        self.index = {name: j for j, name in enumerate(self.names)}
        self.at = np.asarray(at, dtype=np.int64)  # each feature's column in the matrix
        self.low = np.asarray([f.minimum for f in numeric], dtype=np.float64)[:, None]
        self.high = np.asarray([f.maximum for f in numeric], dtype=np.float64)[:, None]
        self.allow = np.asarray([f.allow_missing for f in numeric], dtype=bool)
        self.impute = np.asarray([f.impute for f in numeric], dtype=np.float64)

    def check(self, cols: Columns) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(values, missing, bad): values as float64, null or NaN, and per feature and row whether a rule breaks.

        ``bad`` is None when no row breaks any numeric rule.
        """
        n, k = cols.n, len(self.names)
        x = np.empty((k, n), dtype=np.float64)
        null = np.zeros((k, n), dtype=bool)
        for j, name in enumerate(self.names):
            x[j] = cols.values[name]
            mask = cols.nulls.get(name)
            if mask is not None:
                null[j] = mask
        missing = np.isnan(x)
        missing |= null
        with np.errstate(invalid="ignore"):
            bad = (x < self.low) | (x > self.high)
        bad &= ~missing  # a missing value is imputed, not out of range
        bad |= np.isinf(x)
        bad |= missing & ~self.allow[:, None]
        return x, missing, bad if bad.any() else None


class Validator:
    """Turns decoded records of one reader schema into a model's feature matrix.

    Examples
    --------
    >>> from driftline.schemas.catalog import SchemaCatalog, builtin_schema_dir
    >>> from driftline.schemas.columnar import columns_from_records, flat_fields
    >>> schema = SchemaCatalog.from_dirs([builtin_schema_dir()]).latest("driftline.examples.CardTransaction")
    >>> profile = InputProfile((NumericFeature("amount", 0.0, 1e5),), key_field="card_id")
    >>> v = Validator(profile, schema)
    >>> rows = [{"request_id": "a", "card_id": "c", "amount": 12.5},
    ...         {"request_id": "b", "card_id": "c", "amount": -1.0}]
    >>> out = v.validate(columns_from_records(rows, flat_fields(schema.raw)))
    >>> out.matrix.tolist(), out.rows.tolist(), out.failures[0].reason
    ([[12.5]], [0], 'out_of_range')
    """

    def __init__(self, profile: InputProfile, reader: WireSchema, *, columns: bool = False,
                 personal: frozenset[str] = frozenset()) -> None:
        """``columns``: also keep each feature's valid values, for models with named inputs (off: matrix only).

        ``personal``: fields whose values a failure message must not show (it names the field only).
        """
        profile.check_against(reader)
        self.profile = profile
        self.columns = columns
        self.personal = personal
        types = reader.field_types
        self._nullable = {name: is_nullable(t) for name, t in types.items()}
        self._string_fields = [n for n, t in types.items() if _base_type(t) == "string"]
        self._luts = {
            f.name: {c: i for i, c in enumerate(f.categories)}
            for f in profile.features
            if isinstance(f, CategoricalFeature)
        }
        self._numeric = _NumericBlock(profile)

    def validate(self, cols: Columns, longest: int | None = None) -> ValidatedBatch:
        """Check every row; ``longest``: the largest encoded message's size in bytes, when the caller knows it.

        A string cannot have more characters than its message has bytes, so
        with ``longest`` at most ``max_string_length`` the per-row length
        check is skipped (it cost ~0.05 µs per row and string field); else a
        column is checked row by row only when its longest value, found in
        one C-level pass, is over the limit (one long message in a batch of
        1,000 made every string column's check per row).
        """
        n = cols.n
        profile = self.profile
        values = cols.values
        reason = np.zeros(n, dtype=np.int8)
        culprit = np.full(n, "", dtype=object)
        matrix = np.zeros((n, profile.width), dtype=np.float32)

        def mark(mask: np.ndarray, code: str, name: str) -> None:
            if mask.any():  # nearly always false: one reduction, nothing else
                hit = mask & (reason == 0)
                reason[hit] = _CODE[code]
                culprit[hit] = name

        ids = values[profile.id_field]
        if ids.dtype == object:  # strings (or None): compared in numpy's C loop
            mark((ids == "") | (ids == None), "missing_id", profile.id_field)  # noqa: E711 - elementwise
        else:
            mark(np.fromiter((not v for v in ids), dtype=bool, count=n), "missing_id", profile.id_field)
        limit = profile.max_string_length
        for name in self._string_fields if longest is None or longest > limit else ():
            col = values.get(name)
            if col is None or max(map(len, filter(None, col)), default=0) <= limit:  # one C-level pass
                continue
            lengths = np.fromiter((len(v) if v is not None else 0 for v in col), dtype=np.int64, count=n)
            mark(lengths > limit, "string_too_long", name)

        codes: dict[str, np.ndarray] = {}
        imputed: dict[int, np.ndarray] = {}
        kept: dict[str, np.ndarray] | None = {} if self.columns else None
        block = self._numeric
        x, missing, bad = block.check(cols)  # every numeric feature at once: one row of x per feature
        col_at = 0
        for f in profile.features:
            if isinstance(f, NumericFeature):
                j = block.index[f.name]
                if bad is not None and bad[j].any():  # rare: the failures, named in the order rows are checked
                    null, nan = cols.null_mask(f.name), missing[j] & ~cols.null_mask(f.name)
                    inf = np.isinf(x[j])
                    if not f.allow_missing:
                        mark(null, "null_value", f.name)
                        mark(nan, "not_a_number", f.name)
                    mark(inf, "non_finite", f.name)
                    with np.errstate(invalid="ignore"):
                        mark(~missing[j] & ~inf & ((x[j] < f.minimum) | (x[j] > f.maximum)), "out_of_range", f.name)
            else:
                null = cols.null_mask(f.name)
                lut = self._luts[f.name]
                idx = np.fromiter(map(lut.get, values[f.name], repeat(-1, n)), dtype=np.int64, count=n)
                codes[f.name] = idx  # -1 stays: the window counts an imputed value as unseen
                mark(null, "null_value", f.name)
                unseen = (idx < 0) & ~null
                column = values[f.name]
                if f.unseen == "deadletter":
                    mark(unseen, "unknown_category", f.name)
                elif unseen.any():  # scored as the impute category
                    idx = np.where(unseen, lut[str(f.impute)], idx)
                    column = np.where(unseen, str(f.impute), column)
                known = idx >= 0
                if f.encoding == "onehot":
                    rows = np.flatnonzero(known)
                    matrix[rows, col_at + idx[rows]] = 1.0
                else:
                    matrix[:, col_at] = np.where(known, idx, -1)
                if kept is not None:
                    kept[f.name] = column
            col_at += f.width
        if len(block.names):
            x = np.where(missing, block.impute[:, None], x)
            matrix[:, block.at] = x.T
            for j in np.flatnonzero(block.allow & missing.any(axis=1)).tolist():
                imputed[int(block.at[j])] = missing[j]
            if kept is not None:
                kept.update(zip(block.names, x, strict=True))

        valid = reason == 0
        rows = np.flatnonzero(valid)
        failures = [
            self._failure(i, REASONS[reason[i]], str(culprit[i]), _value(cols, str(culprit[i]), i))
            for i in np.flatnonzero(~valid).tolist()
        ]
        return ValidatedBatch(matrix[rows], rows, failures, codes, {c: m[rows] for c, m in imputed.items()},
                              {k: v[rows] for k, v in kept.items()} if kept is not None else None)

    def _failure(self, index: int, reason: str, name: str, value: Any) -> Failure:
        if name in self.personal:
            shown = "(a personal value, not shown)"
        else:
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
        elif reason == "non_finite":
            text = f"{name} = {shown} is not finite"
        else:
            text = f"{name} = {shown}: {reason.replace('_', ' ')} and the model does not accept missing values"
        return Failure(int(index), "validate", reason, text)


def _value(cols: Columns, name: str, i: int) -> Any:
    if cols.null_mask(name)[i]:
        return None
    v = cols.values[name][i]
    return v.item() if isinstance(v, np.generic) else v
