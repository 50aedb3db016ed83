"""A model's input profile: which request fields feed the model, how, and what is allowed.

The profile is declared in the model's manifest (``features`` and ``request``
sections) and read here, so validation needs nothing but the profile and the
reader schema. Feature order is model input order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from driftline.schemas.catalog import WireSchema
from driftline.schemas.errors import ProfileError

_NUMERIC = {"int", "long", "float", "double"}


@dataclass(frozen=True, slots=True)
class NumericFeature:
    """A numeric field fed as one model input column.

    Missing values (null, or NaN) are rejected unless ``allow_missing``; then
    they are replaced by ``impute`` (the training median, say).
    """

    name: str
    minimum: float = -math.inf
    maximum: float = math.inf
    allow_missing: bool = False
    impute: float = 0.0

    @property
    def width(self) -> int:
        return 1


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    """A string field fed one-hot (one column per category) or as an ordinal index.

    A value outside ``categories`` is dead-lettered (``unseen="deadletter"``),
    or scored as the category ``impute`` (``unseen="impute"``): then the new
    value reaches the drift window as an unseen category, so a new category
    shows as drift and as a rising unseen-category share, not only as dead letters.
    """

    name: str
    categories: tuple[str, ...]
    encoding: Literal["onehot", "ordinal"] = "onehot"
    unseen: Literal["deadletter", "impute"] = "deadletter"
    impute: str | None = None  # the category an unseen value is scored as (unseen="impute")

    @property
    def width(self) -> int:
        return len(self.categories) if self.encoding == "onehot" else 1


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True, slots=True)
class InputProfile:
    """Everything validation needs to turn records into one feature matrix."""

    features: tuple[Feature, ...]
    id_field: str = "request_id"
    key_field: str = "request_id"
    time_field: str | None = "event_time"
    max_string_length: int = 256

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def column_names(self) -> list[str]:
        names: list[str] = []
        for f in self.features:
            if isinstance(f, CategoricalFeature) and f.encoding == "onehot":
                names.extend(f"{f.name}={c}" for c in f.categories)
            else:
                names.append(f.name)
        return names

    def imputed(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Valid feature columns as a model with named inputs reads them: a missing numeric value (NaN) imputed."""
        out: dict[str, np.ndarray] = {}
        for f in self.features:
            if isinstance(f, NumericFeature):
                x = np.asarray(columns[f.name], dtype=np.float64)
                out[f.name] = np.where(np.isnan(x), f.impute, x)
            else:
                out[f.name] = np.asarray(columns[f.name], dtype=object)
        return out

    def encode(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The float32 feature matrix of valid feature columns, as validation builds it (vectorised per column).

        A missing numeric value (NaN) takes its impute value; a category its
        one-hot column or ordinal index (one not in the list: no hot column, or -1).

        >>> p = InputProfile((NumericFeature("x", impute=2.0), CategoricalFeature("c", ("a", "b"))))
        >>> p.encode({"x": np.array([1.0, np.nan]), "c": np.array(["b", "a"], dtype=object)}).tolist()
        [[1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
        """
        imputed = self.imputed(columns)
        n = len(next(iter(imputed.values()))) if imputed else 0
        matrix = np.zeros((n, self.width), dtype=np.float32)
        at = 0
        for f in self.features:
            if isinstance(f, NumericFeature):
                matrix[:, at] = imputed[f.name]
            else:
                lut = {c: i for i, c in enumerate(f.categories)}
                idx = np.fromiter((lut.get(v, -1) for v in imputed[f.name]), dtype=np.int64, count=n)
                if f.encoding == "onehot":
                    rows = np.flatnonzero(idx >= 0)
                    matrix[rows, at + idx[rows]] = 1.0
                else:
                    matrix[:, at] = idx
            at += f.width
        return matrix

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> InputProfile:
        """Build from a manifest's ``features`` list and ``request`` section."""
        try:
            features: list[Feature] = []
            for spec in manifest["features"]:
                kind = spec.get("kind", "numeric")
                if kind == "numeric":
                    features.append(
                        NumericFeature(
                            name=spec["name"],
                            minimum=float(spec.get("min", -math.inf)),
                            maximum=float(spec.get("max", math.inf)),
                            allow_missing=bool(spec.get("allow_missing", False)),
                            impute=float(spec.get("impute", 0.0)),
                        )
                    )
                elif kind == "categorical":
                    encoding = spec.get("encoding", "onehot")
                    if encoding not in ("onehot", "ordinal"):
                        raise ProfileError(
                            f"feature {spec['name']!r}: encoding must be onehot or ordinal, not {encoding!r}"
                        )
                    features.append(_categorical(spec, encoding))
                else:
                    raise ProfileError(
                        f"feature {spec.get('name')!r}: kind must be numeric or categorical, not {kind!r}"
                    )
            request = manifest.get("request", {})
            return cls(
                features=tuple(features),
                id_field=request.get("id_field", "request_id"),
                key_field=request.get("key_field", request.get("id_field", "request_id")),
                time_field=request.get("time_field", "event_time"),
                max_string_length=int(request.get("max_string_length", 256)),
            )
        except KeyError as exc:
            raise ProfileError(f"manifest is missing {exc.args[0]!r} in its feature profile") from exc

    def check_against(self, schema: WireSchema) -> None:
        """Refuse a profile that names fields the schema lacks or types it cannot feed."""
        types = schema.field_types
        for name in (self.id_field, self.key_field):
            if _base_type(types.get(name)) != "string":
                raise ProfileError(f"{schema.subject} needs a string field {name!r} (request id / key)")
        if self.time_field is not None and _base_type(types.get(self.time_field)) not in ("long", "int"):
            raise ProfileError(f"{schema.subject} needs a long field {self.time_field!r} (event time)")
        for f in self.features:
            base = _base_type(types.get(f.name))
            if base is None:
                raise ProfileError(f"feature {f.name!r} is not a field of {schema.subject}")
            if isinstance(f, NumericFeature) and base not in _NUMERIC:
                raise ProfileError(f"feature {f.name!r} is numeric but {schema.subject} has it as {base}")
            if isinstance(f, CategoricalFeature) and base != "string":
                raise ProfileError(f"feature {f.name!r} is categorical but {schema.subject} has it as {base}")


def _categorical(spec: Mapping[str, Any], encoding: Literal["onehot", "ordinal"]) -> CategoricalFeature:
    name, categories = spec["name"], tuple(spec["categories"])
    if not all(isinstance(c, str) for c in categories):
        raise ProfileError(f"feature {name!r}: categories must be strings (the request field is a string), "
                           f"not {[c for c in categories if not isinstance(c, str)][:3]!r}")
    unseen = spec.get("unseen", "deadletter")
    if unseen not in ("deadletter", "impute"):
        raise ProfileError(f"feature {name!r}: unseen must be deadletter or impute, not {unseen!r}")
    impute = spec.get("impute")
    if unseen == "impute" and impute not in categories:
        raise ProfileError(f"feature {name!r}: unseen=impute needs impute set to one of its categories (the most "
                           f"frequent, or the one the model was trained to read as 'other'), not {impute!r}")
    if unseen == "deadletter" and impute is not None:
        raise ProfileError(f"feature {name!r}: impute {impute!r} is only used with unseen=impute")
    return CategoricalFeature(name, categories, encoding, unseen, impute)


def is_nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def _base_type(avro_type: Any) -> str | None:
    """The non-null type name of a field (``["null", "double"]`` → ``double``)."""
    if avro_type is None:
        return None
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        return _base_type(rest[0]) if len(rest) == 1 else "union"
    if isinstance(avro_type, dict):
        return str(avro_type["type"])
    return str(avro_type)
