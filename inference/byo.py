"""Bring your own model: a manifest from what the model already says about itself.

An ONNX graph names its inputs and their element types; a scikit-learn
``OneHotEncoder`` exported by skl2onnx keeps its categories as node
attributes; an MLflow model directory's ``MLmodel`` file names the ONNX file
and the columns the model takes (its signature). With the request schema,
that is all a manifest needs, so :func:`manifest_template` builds one and a
user registers such a model without writing features by hand.

Needs PyYAML for ``MLmodel`` files and the ``onnx`` package for the
categories in the graph (``driftline[train]``); each is imported only when used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from driftline.inference.errors import ModelError
from driftline.inference.manifest import ORT_TYPES, Manifest, sha256_file
from driftline.schemas.catalog import WireSchema
from driftline.schemas.profile import _base_type, is_nullable

MLMODEL = "MLmodel"
#: MLflow column types driftline feeds, and the Avro field types that can feed each
_MLFLOW_TYPES: dict[str, set[str]] = {
    "double": {"int", "long", "float", "double"}, "float": {"int", "long", "float", "double"},
    "long": {"int", "long"}, "integer": {"int", "long"}, "string": {"string"},
}
#: graph nodes a column passes through unchanged on its way to an encoder
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_NUMERIC_ORT = {"tensor(float)", "tensor(double)"}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A graph input or output as ONNX Runtime reports it."""

    name: str
    type: str  # e.g. tensor(float), tensor(string), seq(map(int64,tensor(float)))
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True, slots=True)
class SignatureColumn:
    """One input column of an MLflow signature: its name and MLflow type (``double``, ``string``, ...)."""

    name: str
    type: str

    @property
    def is_string(self) -> bool:
        return self.type == "string"


@dataclass(frozen=True, slots=True)
class MlflowModel:
    """What driftline reads of an MLflow model directory."""

    mlmodel: Path
    onnx_file: Path
    columns: tuple[SignatureColumn, ...] | None  # None: the MLmodel has no input signature
    source: dict[str, Any]  # provenance kept in the manifest (run id, model uuid, MLflow version)


def find_mlmodel(path: Path) -> Path | None:
    """The ``MLmodel`` file of ``path`` (an MLflow model directory, or the file itself), or None."""
    if path.is_dir() and (path / MLMODEL).is_file():
        return path / MLMODEL
    return path if path.name == MLMODEL and path.is_file() else None


def read_mlflow(mlmodel: Path) -> MlflowModel:
    """Parse an ``MLmodel`` file: its ``onnx`` flavor's model file and its input signature."""
    try:
        import yaml
    except ImportError as exc:
        raise ModelError("reading an MLflow MLmodel file needs PyYAML: pip install pyyaml") from exc
    try:
        raw = yaml.safe_load(mlmodel.read_text())
    except yaml.YAMLError as exc:
        raise ModelError(f"{mlmodel} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, Mapping):
        raise ModelError(f"{mlmodel} is not an MLflow MLmodel file (no mapping at its top)")
    flavors = raw.get("flavors") or {}
    flavor = flavors.get("onnx")
    if not isinstance(flavor, Mapping):
        raise ModelError(f"{mlmodel} has no onnx flavor (has {', '.join(sorted(flavors)) or 'none'}); "
                         "log the model with mlflow.onnx.log_model, or convert it to ONNX first")
    onnx_file = mlmodel.parent / str(flavor.get("data") or "model.onnx")
    if not onnx_file.is_file():
        raise ModelError(f"{mlmodel}: its onnx flavor's model file {onnx_file} is missing")
    signature = raw.get("signature") or {}
    inputs = signature.get("inputs") if isinstance(signature, Mapping) else None
    source = {k: raw[k] for k in ("run_id", "model_uuid", "mlflow_version", "artifact_path", "utc_time_created")
              if raw.get(k) is not None}
    source = {"format": "mlflow", "onnx_version": flavor.get("onnx_version"), **source,
              "mlmodel_sha256": sha256_file(mlmodel)}
    return MlflowModel(mlmodel, onnx_file, _signature_columns(inputs, mlmodel) if inputs else None, source)


def _signature_columns(inputs: Any, where: Path) -> tuple[SignatureColumn, ...]:
    """The signature's inputs: MLflow writes them as a JSON string of ``{"name", "type"}`` column specs."""
    try:
        specs = json.loads(inputs) if isinstance(inputs, str) else inputs
    except json.JSONDecodeError as exc:
        raise ModelError(f"{where}: signature.inputs is not JSON: {exc}") from exc
    if not isinstance(specs, list) or not specs:
        raise ModelError(f"{where}: signature.inputs must be a non-empty list of column specs")
    out = []
    for spec in specs:
        name, kind = (spec.get("name"), spec.get("type")) if isinstance(spec, Mapping) else (None, None)
        if not name:
            raise ModelError(f"{where}: the signature has an unnamed input; driftline maps inputs to request fields "
                             "by name: log the model with named columns")
        if kind == "tensor":  # a tensor spec: its numpy dtype says numeric or string
            dtype = np.dtype(str((spec.get("tensor-spec") or {}).get("dtype", "float32")))
            kind = {"f": "double" if dtype.itemsize == 8 else "float", "i": "long", "u": "long"}.get(
                dtype.kind, "string" if dtype.kind in "OUS" else dtype.name)
        if kind not in _MLFLOW_TYPES:
            raise ModelError(f"{where}: signature input {name!r} has type {kind!r}; driftline feeds "
                             f"{', '.join(_MLFLOW_TYPES)} columns")
        out.append(SignatureColumn(str(name), str(kind)))
    return tuple(out)


def graph_io(onnx_file: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs and outputs, from an ONNX Runtime session on the CPU."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
        raise ModelError(f"{onnx_file}: ONNX Runtime cannot load it: {' '.join(str(exc).split())[:300]}") from exc

    def info(args: Sequence[Any]) -> list[TensorInfo]:
        return [TensorInfo(a.name, a.type, tuple(a.shape)) for a in args]

    return info(session.get_inputs()), info(session.get_outputs())


def graph_categories(onnx_file: Path) -> dict[str, tuple[str, ...]] | None:
    """Categories per string graph input, from the ``OneHotEncoder`` nodes it feeds; None without ``onnx``.

    skl2onnx exports each column of a fitted ``OneHotEncoder`` as an
    ``ai.onnx.ml.OneHotEncoder`` node with its categories (``cats_strings``).
    An input is traced back from the node through shape-only nodes; an input
    that feeds encoders with different categories is left out.
    """
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    found: dict[str, set[tuple[str, ...]]] = {}
    for node in graph.node:
        if node.op_type != "OneHotEncoder" or node.domain != "ai.onnx.ml" or not node.input:
            continue
        cats = next((tuple(s.decode() for s in a.strings) for a in node.attribute if a.name == "cats_strings"), ())
        name = node.input[0]
        for _ in range(32):  # a chain of shape-only nodes, not a cycle
            if name in inputs or name not in producer or producer[name].op_type not in _PASS_THROUGH:
                break
            name = producer[name].input[0]
        if cats and name in inputs:
            found.setdefault(name, set()).add(cats)
    return {k: next(iter(v)) for k, v in found.items() if len(v) == 1}


def infer_output(outputs: Sequence[TensorInfo], where: Path) -> dict[str, Any]:
    """``task`` and the ``onnx`` output fields of a scikit-learn-like graph: its probabilities, or its value."""
    zipmap = [o for o in outputs if o.type.startswith("seq(")]
    tensors = [o for o in outputs if o.type in _NUMERIC_ORT]
    chosen = next((o for o in tensors if o.name == "probabilities"), None)
    if chosen is None and zipmap:
        raise ModelError(f"{where}: the probabilities are a ZipMap ({zipmap[0].name}: {zipmap[0].type}); export with "
                         "skl2onnx options={id(classifier): {'zipmap': False}}")
    if chosen is None and len(tensors) == 1:
        chosen = tensors[0]
    if chosen is None:
        raise ModelError(f"{where}: cannot tell which output is the score ({[o.name for o in outputs]}); "
                         "give task and onnx.output in --spec")
    width = chosen.shape[-1] if len(chosen.shape) == 2 else 1
    if width == 1:
        return {"task": "regression", "output": chosen.name}
    if width == 2 or not isinstance(width, int):
        return {"task": "binary_classification", "output": chosen.name, "output_index": 1}
    raise ModelError(f"{where}: output {chosen.name!r} has {width} classes; driftline serves binary classifiers "
                     "and regressors")


def manifest_template(
    onnx_file: Path, base: Mapping[str, Any], schema: WireSchema, *, key_field: str | None = None,
    categories: Mapping[str, Sequence[str]] | None = None, mlflow: MlflowModel | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """(manifest template, notes for the user) of ``onnx_file`` serving requests of ``schema``.

    The features are the model's own inputs (or its MLflow signature's
    columns): numeric inputs become numeric features, string inputs
    categorical ones whose categories come from ``categories``, else from
    the graph's OneHotEncoders, else from ``base``. ``base`` (a ``--spec`` or
    an earlier version's manifest) keeps what the model cannot say: task,
    labels, threshold, request fields, ranges and imputation of features of
    the same name and kind, renamed inputs (``onnx.inputs``' fields).
    Refuses, with a ModelError that says what to fix, a signature unlike the
    graph or a column the schema cannot feed.
    """
    where = mlflow.mlmodel if mlflow is not None else onnx_file
    inputs, outputs = graph_io(onnx_file)
    notes: list[str] = []
    base_onnx = base.get("onnx") or {}
    fields = _base_fields(base_onnx)
    columns = mlflow.columns if mlflow is not None else None
    matrix = columns is not None and len(inputs) == 1 and inputs[0].name not in {c.name for c in columns}
    if columns is not None:
        _check_signature(columns, inputs, where)
        check_signature_types(columns, schema, fields, where)
    kinds: list[tuple[str, str]]  # (input or matrix column name, element type)
    if columns is not None and matrix:  # a column signature over one float matrix: its columns, in order
        only = inputs[0]
        if any(c.is_string for c in columns) or only.type != "tensor(float)" or only.shape[-1] != len(columns):
            raise ModelError(f"{where}: the signature's {len(columns)} columns are not the graph's input "
                             f"{only.name!r} ({only.type} {list(only.shape)}); export one ONNX input per column, "
                             "named as the signature's columns")
        kinds = [(c.name, "float") for c in columns]
        notes.append(f"{onnx_file.name} reads one matrix: its {len(kinds)} columns are the signature's")
    else:
        for i in inputs:
            if i.type not in ORT_TYPES:
                raise ModelError(f"{where}: input {i.name!r} is {i.type}; driftline feeds float, double, int64, "
                                 "int32 and string inputs")
            if len(i.shape) not in (1, 2) or (len(i.shape) == 2 and isinstance(i.shape[1], int) and i.shape[1] != 1):
                raise ModelError(f"{where}: input {i.name!r} has shape {list(i.shape)}, not one column; give --spec "
                                 "with the features of its matrix (README 'Bring your own model')")
        kinds = [(i.name, ORT_TYPES[i.type]) for i in inputs]
    unknown = [n for n, k in kinds if k == "string" and not (categories and n in categories)]
    found = graph_categories(onnx_file) if unknown else {}
    before = {f["name"]: f for f in base.get("features") or () if isinstance(f, Mapping) and "name" in f}
    types = schema.field_types
    features: list[dict[str, Any]] = []
    for name, kind in kinds:
        fld = fields.get(name, name)
        if _base_type(types.get(fld)) is None:
            raise ModelError(f"{where}: input {name!r} reads field {fld!r}, which {schema.subject} lacks; "
                             "give --subject of the schema the requests are written with")
        old = before.get(fld, {})
        if kind == "string":
            cats, origin = _categories(fld, name, categories, found, old)
            if cats is None:
                hint = " (or pip install onnx to read them from the graph)" if found is None else ""
                raise ModelError(f"{where}: no categories for the string input {name!r}: give --categories "
                                 f"'{{\"{name}\": [...]}}'{hint}")
            policy = {k: old[k] for k in ("unseen", "impute") if k in old and old.get("kind") == "categorical"}
            features.append({"name": fld, "kind": "categorical", "categories": list(cats),
                             "encoding": old.get("encoding", "onehot"), **policy})
            notes.append(f"{fld}: {len(cats)} categories from {origin}")
        else:
            numeric = old.get("kind", "numeric") == "numeric"
            keep = {k: old[k] for k in ("min", "max", "allow_missing", "impute") if k in old and numeric}
            features.append({"name": fld, "kind": "numeric", **keep})
            if is_nullable(types.get(fld)) and not keep.get("allow_missing"):
                notes.append(f"{fld} is nullable in {schema.subject}: nulls are dead-lettered (set allow_missing "
                             "and impute for it in --spec to impute them)")
    dropped = sorted(set(before) - {f["name"] for f in features})
    if dropped:
        notes.append(f"left out of the template's features (the model does not read them): {', '.join(dropped)}")
    if "output" in base_onnx:  # the template names the score: it says the task too
        task = base.get("task", "binary_classification")
        onnx_section = {k: base_onnx[k] for k in ("output", "output_index") if k in base_onnx}
    else:
        inferred = infer_output(outputs, where)
        task = inferred.pop("task")
        onnx_section = inferred
    if matrix:
        onnx_section["input"] = inputs[0].name
    else:
        onnx_section["inputs"] = [{"name": n, "field": fields.get(n, n), "type": k} for n, k in kinds]
    request = dict(base.get("request") or {})
    request["subject"] = schema.subject
    if key_field:
        request["key_field"] = key_field
    if "time_field" not in request and _base_type(types.get("event_time")) not in ("long", "int"):
        request["time_field"] = None  # the schema has no event time: the worker stamps its own clock
    template = {k: v for k, v in base.items() if k not in ("features", "onnx", "request", "task", "source")}
    template.update(task=task, request=request, features=features, onnx=onnx_section)
    if mlflow is not None:
        template["source"] = {k: v for k, v in mlflow.source.items() if v is not None}
    return template, notes


def check_against_schema(template: Mapping[str, Any], schema: WireSchema, *, name: str, version: str) -> Manifest:
    """The manifest ``template`` would make, refused (one line) if ``schema``'s fields cannot feed its inputs."""
    manifest = Manifest.from_dict({**template, "name": name, "version": version, "sha256": "0" * 64},
                                  f"the manifest of {name} v{version}")
    manifest.profile.check_against(schema)
    manifest.check_request(schema)
    return manifest


def _base_fields(onnx: Mapping[str, Any]) -> dict[str, str]:
    """input name → request field, from a template's ``onnx.inputs`` (renamed inputs survive a re-derivation)."""
    spec = onnx.get("inputs") or []
    if isinstance(spec, Mapping):
        return {str(k): str(v["field"] if isinstance(v, Mapping) else v) for k, v in spec.items()
                if not isinstance(v, Mapping) or "field" in v}
    return {str(i["name"]): str(i["field"]) for i in spec if isinstance(i, Mapping) and "name" in i and "field" in i}


def _check_signature(columns: Sequence[SignatureColumn], inputs: Sequence[TensorInfo], where: Path) -> None:
    """Refuse a signature whose columns are not the graph's inputs, or are strings where the graph takes numbers."""
    graph = {i.name: i for i in inputs}
    if len(graph) == 1 and next(iter(graph)) not in {c.name for c in columns}:
        return  # one matrix input: checked against the columns' count by the caller
    named = {c.name for c in columns}
    if named != set(graph):
        raise ModelError(f"{where}: the signature's columns {sorted(named)} are not the ONNX inputs {sorted(graph)}; "
                         "export one input per column, named as the column")
    for c in columns:
        is_string = graph[c.name].type == "tensor(string)"
        if c.is_string != is_string:
            raise ModelError(f"{where}: signature column {c.name!r} is {c.type} but the ONNX input is "
                             f"{graph[c.name].type}; the signature does not describe this model")


def _categories(fld: str, name: str, given: Mapping[str, Sequence[str]] | None,
                graph: Mapping[str, tuple[str, ...]] | None, old: Mapping[str, Any]
                ) -> tuple[tuple[str, ...] | None, str]:
    """A string input's categories and where they came from: --categories, the graph, else the template."""
    for key in (name, fld):
        if given and key in given:
            return tuple(str(c) for c in given[key]), "--categories"
    if graph and name in graph:
        return graph[name], "the graph's OneHotEncoder"
    if old.get("kind") == "categorical" and old.get("categories"):
        return tuple(old["categories"]), "the template"
    return None, ""


def check_signature_types(columns: Sequence[SignatureColumn], schema: WireSchema, fields: Mapping[str, str],
                          where: Path) -> None:
    """Refuse signature columns that ``schema`` lacks or types its fields cannot feed (a long column from a double)."""
    types = schema.field_types
    for c in columns:
        fld = fields.get(c.name, c.name)
        avro = _base_type(types.get(fld))
        if avro is None:
            raise ModelError(f"{where}: signature column {c.name!r} is not a field of {schema.subject}; "
                             "give --subject of the schema the requests are written with")
        if avro not in _MLFLOW_TYPES[c.type]:
            raise ModelError(f"{where}: signature column {c.name!r} is {c.type} but {schema.subject} has "
                             f"{fld!r} as {avro}; they must agree")
