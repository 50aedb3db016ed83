"""``driftline explain REQUEST_ID``: a request's features, its prediction and its attributions, largest first.

The explanation comes from ``{ns}.explanations`` and the features from
``{ns}.scored`` (the row the model saw, decoded with the version's
manifest; a sealed row is opened with the PII key, else shown as sealed).
Both are keyed by request id, so only the key's partition is read first
(Kafka's murmur2 partitioner, which the workers' producers use); the other
partitions are read only if it is not there (a producer with another
partitioner). A request that was not explained is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from typing import Any

from driftline.streams.cli.common import Subcommands, cli_settings, require_broker

READ_TIMEOUT_S = 30.0  # reading a partition must reach its end within this


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's ``Utils.murmur2``), as a signed 32-bit int.

    >>> murmur2(b"21"), murmur2(b"foobar")
    (-973932308, -790332482)
    """
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[4 * n4:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java client (and librdkafka's ``murmur2_random``) sends ``key`` to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def find(conf: Mapping[str, Any], topic: str, key: bytes, partitions: int) -> list[bytes]:
    """The values of ``topic``'s records keyed ``key``: its partition first, the others only if none is there."""
    from driftline.streams.kafka.topics import iter_partitions

    first = partition_of(key, partitions)
    for parts in ([first], [p for p in range(partitions) if p != first]):
        found = [m.value() for m in iter_partitions(conf, topic, parts, timeout_s=READ_TIMEOUT_S)
                 if m.key() == key and m.value() is not None]
        if found or not parts:
            return found
    return []


def feature_values(settings: Any, scored: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The scored row's feature values by name, or why they cannot be shown."""
    import numpy as np

    from driftline.inference.errors import ModelError
    from driftline.inference.manifest import Manifest
    from driftline.inference.registry import ModelRegistry, is_plain_name
    from driftline.streams.core.explain import UNSEEN, decode_rows
    from driftline.streams.core.sealing import Opener, SealError

    model, version = str(scored["model"]), str(scored["model_version"])
    if not (is_plain_name(model) and is_plain_name(version)):
        return {}, "the scored record names no model of a registry"
    try:
        profile = Manifest.read(ModelRegistry(settings.model_dir).path(model, version)).profile
    except (ModelError, OSError, ValueError) as exc:
        return {}, f"{model} v{version} is not in the model registry {settings.model_dir} ({exc})"
    data = bytes(scored["features"])
    if scored.get("sealed"):
        key = settings.pii_secret()
        if key is None:
            return {}, "the row is sealed (the model reads personal fields): set DRIFTLINE_PII_KEY to show it"
        try:
            data = Opener(key).open(model, str(scored["request_id"]), data)
        except SealError as exc:
            return {}, f"the sealed row does not open: {exc}"
    if len(data) != 4 * profile.width:
        return {}, f"the row has {len(data) // 4} columns, the manifest {profile.width}"
    cols = decode_rows(profile, np.frombuffer(data, dtype="<f4").reshape(1, -1))
    out: dict[str, Any] = {}
    for name, col in cols.items():
        v = col[0]
        out[name] = None if (isinstance(v, float) and np.isnan(v)) or v == UNSEEN else (
            float(v) if isinstance(v, float | np.floating) else str(v))
    return out, None


def ranked(explanation: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(feature, attribution), the largest magnitude first (ties: the manifest's order)."""
    pairs = list(zip(explanation["features"], explanation["attributions"], strict=True))
    return sorted(pairs, key=lambda p: -abs(p[1]))


def render(request_id: str, explanation: Mapping[str, Any], scored: Mapping[str, Any] | None,
           values: Mapping[str, Any], why: str | None) -> str:
    """The text ``driftline explain`` prints."""
    e = explanation
    space = "log-odds" if e["link"] == "logit" else "the score's units"
    predicted = f" ({scored['predicted']})" if scored is not None and scored.get("predicted") else ""
    lines = [f"request {request_id}: {e['model']} v{e['model_version']} ({e['variant']}), "
             f"score {e['score']:.6g}{predicted}",
             f"attributions in {space}: base {e['base']:+.4f} + sum {e['value'] - e['base']:+.4f} = "
             f"{e['value']:+.4f}; {e['method']}, {e['samples']} coalitions x {e['background']} reference rows"]
    if scored is None:
        lines.append("features: not on the scored topic (past its retention?)")
    elif why is not None:
        lines.append(f"features: {why}")
    rows = ranked(e)
    width = max(len("feature"), *(len(f) for f, _ in rows))
    lines.append(f"  {'feature':<{width}}  {'value':>14}  {'attribution':>12}")
    for f, a in rows:
        v = values.get(f)
        shown = ("(missing)" if f in values else "") if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
        lines.append(f"  {f:<{width}}  {shown[:14]:>14}  {a:>+12.4f}")
    return "\n".join(lines)


def cmd_explain(args: argparse.Namespace) -> int:
    from driftline.schemas.codec import decode
    from driftline.streams.catalog import build_catalog
    from driftline.streams.errors import NotFound

    settings = cli_settings(args)
    catalog = build_catalog(settings)
    explanations, scored_topic = settings.topic("explanations"), settings.topic("scored")
    parts = require_broker(settings, [explanations, scored_topic])
    key = args.request_id.encode()
    conf = settings.confluent()
    found = _decoded(catalog, find(conf, explanations, key, parts[explanations]), decode)
    if not found:
        raise NotFound(f"request {args.request_id} has no explanation on {explanations}: it was not picked "
                       f"(explain_fraction={settings.explain_fraction} on this side; the workers' setting decides), "
                       "not explained yet, or is past the topic's retention")
    explanation = found[-1]  # a request explained twice (a restart) carries the same numbers
    scored = next((s for s in reversed(_decoded(catalog, find(conf, scored_topic, key, parts[scored_topic]), decode))
                   if s.get("variant") == explanation["variant"]
                   and s.get("model_version") == explanation["model_version"]), None)
    values, why = feature_values(settings, scored) if scored is not None else ({}, None)
    if args.json:
        print(json.dumps({"request_id": args.request_id, **{k: explanation[k] for k in (
            "model", "model_version", "variant", "score", "link", "base", "value", "method", "samples",
            "background")}, "predicted": None if scored is None else scored.get("predicted"),
            "features": values, "features_note": why,
            "attributions": dict(ranked(explanation))}))
    else:
        print(render(args.request_id, explanation, scored, values, why))
    return 0


def _decoded(catalog: Any, values: Iterable[bytes], decode: Any) -> list[dict[str, Any]]:
    out = []
    for v in values:
        try:
            out.append(decode(catalog, v, fast=True)[1])
        except Exception:  # noqa: BLE001,S112 - anyone may write to a topic: a record that does not decode is not it
            continue
    return out


def add_explain_command(sub: Subcommands) -> None:
    e = sub.add_parser("explain", help="a request's features, prediction and attributions, largest first")
    e.add_argument("request_id")
    e.add_argument("--broker")
    e.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    e.set_defaults(func=cmd_explain)
