"""``driftline model ...``: register versions, list them, and change what serves (control topic)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftline.inference.deployment import Deployment, live_variants
from driftline.inference.manifest import MANIFEST, Manifest
from driftline.inference.model import ProviderChoice
from driftline.inference.registry import ModelRegistry, register_version
from driftline.streams.core.provenance import code_version, file_fingerprint
from driftline.streams.errors import ConfigError
from driftline.streams.kafka.control import configured, current_deployment, read_deployments, write_deployment
from driftline.streams.settings import ModelBinding, load_settings


def cmd_register(args: argparse.Namespace) -> int:
    settings = load_settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    registry = ModelRegistry(settings.model_dir)
    onnx_file = Path(args.file)
    if not onnx_file.is_file():
        raise ConfigError(f"{onnx_file} does not exist; give the path of an .onnx file")
    if args.spec:
        template = json.loads(Path(args.spec).read_text())
    elif args.like:
        template = dict(Manifest.read(Path(args.like)).raw)
    elif registry.versions(args.name):
        template = dict(Manifest.read(registry.path(args.name)).raw)  # a retrain: same features as the latest
    else:
        raise ConfigError(f"model {args.name} has no versions yet: give --spec FILE.json (features, task, request)")
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else {}
    data = Path(args.data) if args.data else None
    providers: ProviderChoice = args.providers or settings.providers
    key_file = Path(args.sign_key) if args.sign_key else settings.model_sign_key_file
    sign_key = Path(key_file).read_bytes() if key_file else None
    catalog = None
    if data is not None or settings.schema_registry.url:
        from driftline.streams.catalog import build_catalog

        catalog = build_catalog(settings)

    def finish(staging: Path) -> None:
        """Before the version becomes visible: it must warm up where the workers run it; then its profile.

        With a Schema Registry, its request schema must pass the requests
        subject's compatibility rule first (and is registered there).
        """
        if catalog is not None and catalog.source is not None:
            from driftline.streams.registry import request_writer

            binding = next((b for b in settings.models if b.name == args.name), ModelBinding(name=args.name))
            topic = settings.requests_topic(binding)
            schema = request_writer(catalog, settings, Manifest.read(staging).request_subject, topic)
            print(f"request schema {schema.subject} v{schema.version}: id {schema.id} in the schema registry "
                  f"(subject {settings.schema_registry.subject(topic, schema.subject)})")
        check_runs(staging, providers)
        if data is not None and catalog is not None:
            from driftline.streams.core.profiling import build_profile

            _, rows = build_profile(staging, data, catalog)
            print(f"reference profile built from {rows} rows of {data}")
        if sign_key is not None:  # last: the signature covers the manifest and the profile as they now are
            from driftline.inference.signing import sign_version

            sign_version(staging, sign_key)
            print("signed (manifest.sig)")

    target = register_version(
        settings.model_dir, onnx_file, template, name=args.name, version=args.version,
        created_at=datetime.now(UTC), code_version=code_version(), metrics=metrics,
        training_data=file_fingerprint(data) if data is not None else None, finish=finish,
    )
    manifest = json.loads((target / MANIFEST).read_text())
    print(f"registered {args.name} v{args.version} at {target} (sha256 {manifest['sha256'][:12]})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    settings = load_settings(broker=args.broker, **({"model_dir": args.model_dir} if args.model_dir else {}))
    registry = ModelRegistry(settings.model_dir)
    try:
        deployments = read_deployments(settings, timeout_s=5.0)
        note = ""
    except Exception as exc:  # noqa: BLE001 - listing works without a broker
        deployments, note = {}, f"(control topic unreadable, live roles from settings: {exc})"
    names = [args.name] if args.name else registry.names()
    rows: list[dict[str, Any]] = []
    for name in names:
        dep = deployments.get(name)
        if dep is None and any(b.name == name for b in settings.models) and registry.versions(name):
            dep = configured(settings, name)
        roles: dict[str, list[str]] = {}
        for variant, version in live_variants(dep) if dep else []:
            roles.setdefault(version, []).append(variant)
        for version in registry.versions(name):
            raw = Manifest.read(registry.path(name, version)).raw
            rows.append({"model": name, "version": version, "live": roles.get(version, []),
                         "created_at": raw.get("created_at"), "sha256": raw.get("sha256"),
                         "metrics": dict(raw.get("metrics") or {})})
    if args.json:
        print(json.dumps({"versions": rows, "control_topic_error": note or None}, default=str))
        return 0
    print(f"{'model':<12} {'version':<8} {'live':<18} {'created':<26} {'sha256':<13} metrics")
    for row in rows:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["metrics"].items())
        live = ",".join(row["live"]) or "-"
        print(f"{row['model']:<12} {row['version']:<8} {live:<18} {str(row['created_at'] or '-'):<26} "
              f"{str(row['sha256'])[:12]:<13} {metrics or '-'}")
    if note:
        print(note)
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    """promote | canary | shadow | ab | rollback: read the current deployment, change it, write it back."""
    from confluent_kafka import Producer

    from driftline.streams.cli.common import require_broker

    settings = load_settings(broker=args.broker, **({"model_dir": args.model_dir} if args.model_dir else {}))
    registry = ModelRegistry(settings.model_dir)
    require_broker(settings, [settings.topic("models")])
    current = current_deployment(settings, args.name, writing=True)
    now = int(time.time() * 1000)
    providers: ProviderChoice = args.providers or settings.providers
    for version in (getattr(args, "version", None), *(getattr(args, "versions", None) or ())):
        if version is not None and not getattr(args, "stop", False):
            check_servable(registry, current, str(version), providers)
    action = args.model_command
    if action == "promote":
        new = current.promote(args.version, now)
    elif action == "canary":
        new = current.stop_canary(now) if args.stop else current.start_canary(_need(args), args.fraction, now)
    elif action == "shadow":
        new = current.remove_shadow(_need(args), now) if args.stop else current.add_shadow(_need(args), now)
    elif action == "ab":
        if args.stop:
            new = current.stop_ab(now)
        elif len(args.versions or ()) != 2:
            raise ConfigError("driftline model ab NAME A B --split F: give two versions, or --stop")
        else:
            new = current.start_ab(args.versions[0], args.versions[1], args.split, now)
    else:
        new = current.rollback(now)
        for version in new.versions():  # the champion it restores may have been loaded nowhere for a while
            if version not in current.versions():
                check_servable(registry, current, version, providers)
    write_deployment(Producer(settings.confluent(log_level=0)), settings, new, reason=args.reason)
    logging.getLogger("driftline.audit").info(
        "deployment written: %s", new.describe(),
        extra={"event": "deployment_written", "model": new.model, "version": new.champion,
               "actor": settings.actor(), "reason": args.reason})
    print(f"before: {current.describe()}\nnow:    {new.describe()}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from driftline.inference.signing import generate_keys

    generate_keys(Path(args.private), Path(args.public))
    print(f"private key {args.private} (keep it secret), public key {args.public} (for the workers)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from driftline.inference.signing import sign_version

    settings = load_settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    directory = ModelRegistry(settings.model_dir).path(args.name, args.version)
    print(f"signed {args.name} v{args.version}: {sign_version(directory, Path(args.key).read_bytes())}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The control topic's records of one model, oldest first (compaction may have removed old ones)."""
    from driftline.streams.cli.common import require_broker
    from driftline.streams.core.poison import Skip
    from driftline.streams.kafka.control import ControlRecord, read_history

    settings = load_settings(broker=args.broker)
    require_broker(settings, [settings.topic("models")])
    records = read_history(settings, args.name)
    if not records:
        print(f"no deployment records of {args.name} on {settings.topic('models')}")
        return 0
    rows: list[dict[str, Any]] = []
    for rec in records:
        if isinstance(rec, ControlRecord):
            dep = rec.deployment
            when = datetime.fromtimestamp(dep.updated_at / 1000, tz=UTC).isoformat(timespec="seconds") \
                if dep.updated_at else "-"
            rows.append({"at": when, "by": rec.changed_by, "serves": dep.describe(), "reason": rec.reason,
                         "signature": rec.signature})
        elif isinstance(rec, Skip):
            rows.append({"at": "-", "by": "-", "serves": "REFUSED: " + rec.detail, "reason": "",
                         "signature": rec.reason})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'when':<26} {'by':<24} {'signature':<24} serves (reason)")
    for row in rows:
        print(f"{row['at']:<26} {row['by'][:24]:<24} {row['signature']:<24} {row['serves']}"
              + (f" ({row['reason']})" if row["reason"] else ""))
    return 0


def check_servable(registry: ModelRegistry, current: Deployment, version: str,
                   providers: ProviderChoice = "auto") -> None:
    """Refuse here what the workers would refuse: unknown version, bad hash, a failed warm-up, inputs unlike the
    champion's.

    ``providers`` should be the workers' (``--providers``, default
    DRIFTLINE_PROVIDERS): a graph can warm up on CPU and fail on CUDA.
    """
    from driftline.inference.manifest import input_mismatch

    check_runs(registry.path(current.model, version), providers)
    model = Manifest.read(registry.path(current.model, version))
    champion = Manifest.read(registry.path(current.model, current.champion))
    reason = input_mismatch(champion, model)
    if reason is not None:
        raise ConfigError(f"{current.model}: {reason}")


def check_runs(directory: Path, providers: ProviderChoice) -> None:
    """Load and warm up a version as a worker with ``providers`` would; ModelError when it cannot serve there."""
    from driftline.inference.model import OnnxModel

    model = OnnxModel(directory, providers=providers)
    model.load()
    print(f"{model.name} v{model.version} warms up on {model.active_provider}")
    model.unload()


def _need(args: argparse.Namespace) -> str:
    if not args.version:
        raise ConfigError(f"driftline model {args.model_command} {args.name}: give a VERSION (or --stop)")
    return str(args.version)


def add_model_commands(sub: Any) -> None:
    model = sub.add_parser("model", help="model registry and rollout: register, list, promote, canary, ...")
    msub = model.add_subparsers(dest="model_command", required=True)

    def common(p: argparse.ArgumentParser, broker: bool = True, check: bool = True) -> None:
        p.add_argument("--model-dir", help="registry root (DRIFTLINE_MODEL_DIR)")
        if broker:
            p.add_argument("--broker", help="bootstrap servers (DRIFTLINE_BROKER)")
        if check:
            p.add_argument("--providers", choices=["auto", "cpu", "cuda"],
                           help="ONNX Runtime providers to check the version with: the workers' "
                                "(default DRIFTLINE_PROVIDERS)")

    reg = msub.add_parser("register", help="add an immutable version: hash, manifest, input check, profile")
    reg.add_argument("file", help="the .onnx file")
    reg.add_argument("--name", required=True)
    reg.add_argument("--version", required=True)
    reg.add_argument("--like", help="copy features/task/request from this version directory")
    reg.add_argument("--spec", help="JSON with task, features, request, onnx, threshold, labels")
    reg.add_argument("--metrics", help="JSON of offline evaluation metrics")
    reg.add_argument("--data", help="training data (JSON lines/CSV): fingerprint and reference profile")
    reg.add_argument("--sign-key",
                     help="sign the version with this Ed25519 private key (DRIFTLINE_MODEL_SIGN_KEY_FILE)")
    common(reg, broker=False)
    from driftline.streams.cli.byo import add_register_options  # multi-input ONNX, MLflow directories

    add_register_options(reg, cmd_register)

    ls = msub.add_parser("list", help="versions, and which serve (champion, canary, a/b, shadow)")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--json", action="store_true", help="one JSON object instead of the table (machine-readable)")
    common(ls, check=False)
    ls.set_defaults(func=cmd_list)

    pro = msub.add_parser("promote", help="make a version the champion")
    pro.add_argument("name")
    pro.add_argument("version")
    common(pro)
    can = msub.add_parser("canary", help="send a share of entities to a version (or --stop)")
    can.add_argument("name")
    can.add_argument("version", nargs="?")
    can.add_argument("--fraction", type=float, default=0.1, help="share of entities (default 0.1)")
    can.add_argument("--stop", action="store_true")
    common(can)
    sh = msub.add_parser("shadow", help="score every request with a version too, on the shadow topic")
    sh.add_argument("name")
    sh.add_argument("version", nargs="?")
    sh.add_argument("--stop", action="store_true")
    common(sh)
    ab = msub.add_parser("ab", help="split entities between versions A and B (or --stop)")
    ab.add_argument("name")
    ab.add_argument("versions", nargs="*", metavar="VERSION")
    ab.add_argument("--split", type=float, default=0.5, help="share of entities on B (default 0.5)")
    ab.add_argument("--stop", action="store_true")
    common(ab)
    rb = msub.add_parser("rollback", help="end a canary or A/B test; else restore the previous champion")
    rb.add_argument("name")
    common(rb)
    for p in (pro, can, sh, ab, rb):
        p.add_argument("--reason", default="", help="why: kept with the change (driftline model history)")
        p.set_defaults(func=cmd_change)
    kg = msub.add_parser("keygen", help="make an Ed25519 key pair to sign model versions with")
    kg.add_argument("private", help="where the private key goes (mode 0600; keep it with whoever registers)")
    kg.add_argument("public", help="where the public key goes (DRIFTLINE_MODEL_VERIFY_KEY_FILE for workers)")
    kg.set_defaults(func=cmd_keygen)
    sg = msub.add_parser("sign", help="sign an existing version (a manifest.sig beside it)")
    sg.add_argument("name")
    sg.add_argument("version")
    sg.add_argument("--key", required=True, help="the Ed25519 private key (PEM)")
    sg.add_argument("--model-dir", help="registry root (DRIFTLINE_MODEL_DIR)")
    sg.set_defaults(func=cmd_sign)
    hist = msub.add_parser("history", help="every change of what serves a model: when, who, why, signature")
    hist.add_argument("name")
    hist.add_argument("--json", action="store_true", help="one JSON object per change instead of the table")
    hist.add_argument("--broker", help="bootstrap servers (DRIFTLINE_BROKER)")
    hist.set_defaults(func=cmd_history)

