"""The manifest of a model version: what the ONNX file is, what it reads, what it means."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from driftline.inference.errors import ModelError
from driftline.schemas.catalog import WireSchema
from driftline.schemas.errors import ProfileError
from driftline.schemas.pii import personal_fields
from driftline.schemas.profile import CategoricalFeature, InputProfile, _base_type

Task = Literal["binary_classification", "regression"]
ElementType = Literal["float", "double", "int64", "int32", "string"]
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
#: ONNX Runtime's name of each element type a named input may have
ORT_TYPES: dict[str, ElementType] = {"tensor(float)": "float", "tensor(double)": "double", "tensor(int64)": "int64",
                                     "tensor(int32)": "int32", "tensor(string)": "string"}
_INTEGER_FIELDS = {"int", "long"}
_SEGMENT_TYPES = {"string", "int", "long", "boolean"}


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One named ONNX input, fed one request field as a column (``[n, 1]``) of its element type.

    Models exported with several inputs (a scikit-learn ``ColumnTransformer``
    through skl2onnx, one input per column) read the fields themselves and do
    their own encoding; the manifest says which field feeds which input.
    """

    name: str
    field: str
    type: ElementType


@dataclass(frozen=True, slots=True)
class Manifest:
    """Parsed ``manifest.json``; ``raw`` keeps every field, the known ones are typed."""

    name: str
    version: str
    task: Task
    sha256: str
    request_subject: str
    profile: InputProfile
    input_name: str
    output_name: str
    output_index: int | None
    threshold: float
    labels: tuple[str, str]
    raw: Mapping[str, Any] = field(repr=False)
    #: named inputs (``onnx.inputs``); empty for a model that reads one float32 matrix (``onnx.input``)
    inputs: tuple[ModelInput, ...] = ()
    #: request fields whose values are personal (besides those the schema marks ``"driftline.pii": true``)
    personal: tuple[str, ...] = ()
    #: request fields whose values split the bias audit (they need not be features; never personal ones)
    segments: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "manifest") -> Manifest:
        try:
            task = raw["task"]
            if task not in ("binary_classification", "regression"):
                raise ModelError(f"{where}: task must be binary_classification or regression, not {task!r}")
            onnx = raw.get("onnx", {})
            labels = tuple(raw.get("labels", ("negative", "positive")))
            if len(labels) != 2:
                raise ModelError(f"{where}: labels must name the negative and the positive class")
            profile = InputProfile.from_manifest(raw)
            return cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                task=task,
                sha256=str(raw["sha256"]).lower(),
                request_subject=str(raw["request"]["subject"]),
                profile=profile,
                input_name=str(onnx.get("input", "features")),
                output_name=str(onnx.get("output", "probabilities" if task != "regression" else "variable")),
                output_index=onnx.get("output_index", 1 if task != "regression" else None),
                threshold=float(raw.get("threshold", 0.5)),
                labels=(str(labels[0]), str(labels[1])),
                raw=raw,
                inputs=_named_inputs(onnx, profile, where),
                personal=_personal(raw.get("personal", []), where),
                segments=_segments(raw.get("segments", []), task, where),
            )
        except KeyError as exc:
            raise ModelError(f"{where}: missing field {exc.args[0]!r}; see README 'Bring your own model'") from exc
        except ProfileError as exc:
            raise ModelError(f"{where}: {exc}") from exc

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"{path} is missing; a model version needs model.onnx and manifest.json") from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw, str(path))


    def check_request(self, schema: WireSchema) -> None:
        """Refuse named inputs that ``schema``'s fields cannot feed exactly (an int64 input from a double field),
        and a ``personal`` field the schema does not have (a typo would leave the real one unprotected)."""
        types = schema.field_types
        unknown = [n for n in self.personal if n not in types]
        if unknown:
            raise ModelError(f"{self.name} v{self.version}: personal lists {unknown[0]!r}, which {schema.subject} "
                             "lacks; list the request's field names")
        self._check_segments(schema)
        id_field = self.profile.id_field
        if id_field in personal_fields(schema.raw, self.personal):
            raise ModelError(f"{self.name} v{self.version}: the request id {id_field!r} cannot be personal: it is the "
                             "key of every output and of the label join; use a random id and mark the fields it "
                             "was derived from")
        for i in self.inputs:
            base = _base_type(types.get(i.field))
            if base is None:
                raise ModelError(f"{self.name} v{self.version}: onnx input {i.name!r} reads field {i.field!r}, "
                                 f"which {schema.subject} lacks")
            if i.type in ("int64", "int32") and base not in _INTEGER_FIELDS:
                raise ModelError(f"{self.name} v{self.version}: onnx input {i.name!r} is {i.type} but {schema.subject}"
                                 f" has {i.field!r} as {base}; export the input as float or double")


    def _check_segments(self, schema: WireSchema) -> None:
        """A segment must be a non-personal field of text, integers or booleans (a double would give every
        request its own group; a personal value would reach topics and metrics as a label)."""
        types = schema.field_types
        personal = personal_fields(schema.raw, self.personal)
        for name in self.segments:
            base = _base_type(types.get(name))
            if base is None:
                raise ModelError(f"{self.name} v{self.version}: segments lists {name!r}, which {schema.subject} "
                                 "lacks; list the request's field names")
            if name in personal:
                raise ModelError(f"{self.name} v{self.version}: segment {name!r} is a personal field and its values "
                                 "would reach topics and metrics; drop it from segments or segment by a coarser, "
                                 "non-personal field")
            if base not in _SEGMENT_TYPES:
                raise ModelError(f"{self.name} v{self.version}: segment {name!r} is {base}; segment by a string, "
                                 "integer or boolean field (bucket a number into one first)")


def _segments(listed: Any, task: str, where: str) -> tuple[str, ...]:
    if not isinstance(listed, list) or not all(isinstance(n, str) and n for n in listed):
        raise ModelError(f"{where}: segments must be a list of request field names")
    if listed and task != "binary_classification":
        raise ModelError(f"{where}: segments need a binary classifier (the audit compares decision rates); "
                         "drop segments")
    if len(set(listed)) != len(listed):
        raise ModelError(f"{where}: segments lists a field twice; list each once")
    return tuple(listed)


def _personal(listed: Any, where: str) -> tuple[str, ...]:
    if not isinstance(listed, list) or not all(isinstance(n, str) and n for n in listed):
        raise ModelError(f"{where}: personal must be a list of request field names")
    return tuple(listed)


def _named_inputs(onnx: Mapping[str, Any], profile: InputProfile, where: str) -> tuple[ModelInput, ...]:
    """``onnx.inputs``: a list of ``{"name", "field", "type"}`` or a mapping name → ``{"field", "type"}``.

    Every feature feeds at least one input, and each input's type suits its
    feature: the manifest must describe the whole model, as a matrix does.
    """
    spec = onnx.get("inputs")
    if spec is None:
        return ()
    if "input" in onnx:
        raise ModelError(f"{where}: onnx has both input (one matrix) and inputs (named columns); keep one")
    if isinstance(spec, Mapping):
        spec = [{"name": k, **(v if isinstance(v, Mapping) else {"field": v})} for k, v in spec.items()]
    if not isinstance(spec, list) or not spec:
        raise ModelError(f"{where}: onnx.inputs must be a non-empty list of {{name, field, type}}")
    features = {f.name: f for f in profile.features}
    out: list[ModelInput] = []
    for item in spec:
        if not isinstance(item, Mapping) or "name" not in item:
            raise ModelError(f"{where}: each onnx.inputs entry needs a name (and field, type), not {item!r}")
        name, fld, kind = str(item["name"]), str(item.get("field", item["name"])), item.get("type")
        if kind not in get_args(ElementType):
            raise ModelError(f"{where}: onnx input {name!r} has type {kind!r}; "
                             f"give one of {', '.join(get_args(ElementType))}")
        feature = features.get(fld)
        if feature is None:
            raise ModelError(f"{where}: onnx input {name!r} reads {fld!r}, which is not among the features; add it")
        if (kind == "string") != isinstance(feature, CategoricalFeature):
            raise ModelError(f"{where}: onnx input {name!r} is {kind} but feature {fld!r} is "
                             f"{'categorical' if isinstance(feature, CategoricalFeature) else 'numeric'}; "
                             "string inputs read categorical features, numeric inputs numeric ones")
        impute = getattr(feature, "impute", 0.0)
        if kind in ("int64", "int32") and float(impute) != int(impute):
            raise ModelError(f"{where}: feature {fld!r} feeds the {kind} input {name!r}; its impute {impute} "
                             "must be a whole number")
        out.append(ModelInput(name, fld, cast(ElementType, kind)))
    names = [i.name for i in out]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ModelError(f"{where}: onnx.inputs names inputs {twice} twice; name each input once")
    unfed = [f for f in features if f not in {i.field for i in out}]
    if unfed:
        raise ModelError(f"{where}: features {unfed} feed no onnx input; map them in onnx.inputs or drop them")
    return tuple(out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_mismatch(a: Manifest, b: Manifest) -> str | None:
    """Why versions ``a`` and ``b`` cannot serve one requests topic side by side, or None.

    Variants of a model share one decode and validation pass per batch, so
    they must read the same request schema into the same feature matrix.
    """
    if a.request_subject != b.request_subject:
        return f"v{b.version} reads {b.request_subject}, v{a.version} reads {a.request_subject}"
    if a.profile != b.profile:
        return (f"v{b.version} declares other features or validation than v{a.version} "
                f"({b.profile.column_names} vs {a.profile.column_names}); register it with the same features")
    if set(a.personal) != set(b.personal):  # the worker protects what it started with: a change needs a restart
        return (f"v{b.version} lists other personal fields than v{a.version} ({sorted(b.personal)} vs "
                f"{sorted(a.personal)}); start the workers with v{b.version} configured to serve it")
    return None
