"""``driftline model register`` for models as users have them: multi-input ONNX graphs and MLflow directories.

Adds ``--subject``, ``--key-field`` and ``--categories`` to the register
command and wraps it: where FILE is an MLflow model directory (or its
``MLmodel`` file), or ``--subject`` is given, the manifest is built from the
model itself (:func:`driftline.inference.byo.manifest_template`) and checked
against the request schema before the usual registration (hash, manifest,
warm-up, profile) runs on it. A plain ``.onnx`` file with ``--spec``/``--like``
registers as before; a template with named inputs is checked against the
schema first, so a mismatch is refused here and not by every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

from driftline.inference.registry import ModelRegistry
from driftline.streams.errors import ConfigError

Register = Callable[[argparse.Namespace], int]


def add_register_options(reg: argparse.ArgumentParser, register: Register) -> None:
    """Add the bring-your-own-model flags to ``reg`` and make it run ``register`` through :func:`cmd_register_byo`."""
    reg.description = ("FILE is an .onnx file, or an MLflow model directory with an onnx flavor (its MLmodel "
                       "file is read). With an MLflow directory or --subject, the manifest is built from the model "
                       "itself: its inputs (or signature) become the features; --spec/--like add task, ranges, "
                       "imputation.")
    _option(reg, "--subject", help="Avro subject of the requests; builds the manifest from the model's own inputs "
                                   "(and MLflow signature)")
    _option(reg, "--key-field", help="request field that keys entities (canary and A/B routing); default: the id field")
    _option(reg, "--categories", help='categories of string inputs, JSON inline or a file: {"merchant_category": '
                                      '["grocery", ...]} (default: read from the graph\'s OneHotEncoders)')

    @wraps(register)  # still `driftline model register`'s own function (model.py), with this step before it
    def run(args: argparse.Namespace) -> int:
        return cmd_register_byo(args, register)

    reg.set_defaults(func=run)


def _option(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add ``flag`` unless the parser has it already (another change may add the same flag)."""
    try:
        parser.add_argument(flag, **kwargs)
    except argparse.ArgumentError:
        pass


def cmd_register_byo(args: argparse.Namespace, register: Register) -> int:
    """Build the manifest from the model where asked to, check it against the request schema, then ``register``."""
    from driftline.inference.byo import check_against_schema, find_mlmodel, manifest_template, read_mlflow
    from driftline.streams.catalog import build_catalog
    from driftline.streams.settings import load_settings

    source = Path(args.file)
    mlmodel = find_mlmodel(source)
    subject = getattr(args, "subject", None)
    derive = mlmodel is not None or bool(subject)
    if not derive and getattr(args, "categories", None):
        raise ConfigError("--categories is for a manifest built from the model: give --subject (or an MLflow "
                          "directory), or put the categories in --spec")
    settings = load_settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    base = _base_template(args, ModelRegistry(settings.model_dir))
    if not derive:
        subject = (base or {}).get("request", {}).get("subject")
        if base is not None and (base.get("onnx") or {}).get("inputs") and subject:  # the schema must feed them
            check_against_schema(base, build_catalog(settings).latest(str(subject)), name=args.name,
                                 version=args.version)
        return register(args)

    mlflow = read_mlflow(mlmodel) if mlmodel is not None else None
    onnx_file = mlflow.onnx_file if mlflow is not None else source
    if not onnx_file.is_file():
        raise ConfigError(f"{onnx_file} does not exist; give an .onnx file or an MLflow model directory")
    base = base or {}
    subject = subject or (base.get("request") or {}).get("subject")
    if not subject:
        raise ConfigError("give --subject: the Avro subject the model's requests are written with")
    schema = build_catalog(settings).latest(str(subject))
    template, notes = manifest_template(onnx_file, base, schema, key_field=getattr(args, "key_field", None),
                                        categories=_categories(getattr(args, "categories", None)), mlflow=mlflow)
    check_against_schema(template, schema, name=args.name, version=args.version)
    what = f"MLflow model {mlflow.mlmodel.parent}" if mlflow is not None else str(onnx_file)
    print(f"manifest from {what}: {len(template['features'])} features, task {template['task']}, "
          f"requests {schema.subject}")
    for note in notes:
        print(f"  {note}")
    fd, spec = tempfile.mkstemp(prefix="driftline-manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(template, fh)
        return register(argparse.Namespace(**{**vars(args), "file": str(onnx_file), "spec": spec, "like": None}))
    finally:
        os.unlink(spec)


def _base_template(args: argparse.Namespace, registry: ModelRegistry) -> dict[str, Any] | None:
    """What ``driftline model register`` would start from: --spec, --like, else the model's latest version."""
    from driftline.inference.manifest import Manifest

    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--spec {args.spec}: {exc}; give a JSON file (task, features, request, onnx)") from exc
        if not isinstance(spec, dict):
            raise ConfigError(f"--spec {args.spec}: not a JSON object; give task, features, request, onnx")
        return spec
    if args.like:
        return dict(Manifest.read(Path(args.like)).raw)
    if registry.versions(args.name):
        return dict(Manifest.read(registry.path(args.name)).raw)
    return None


def _categories(value: str | None) -> Mapping[str, Sequence[str]] | None:
    """``--categories``: inline JSON (starts with ``{``) or a JSON file, mapping a column to its categories."""
    if not value:
        return None
    try:
        raw = json.loads(value if value.lstrip().startswith("{") else Path(value).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--categories: {exc}; give JSON like {{\"merchant_category\": [\"grocery\"]}}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise ConfigError('--categories: give a JSON object of non-empty lists, like {"channel": ["pos", "online"]}')
    return {str(k): [str(c) for c in v] for k, v in raw.items()}
