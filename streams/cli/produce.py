"""``driftline produce``: JSON-lines or CSV records, encoded and published as requests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from driftline.streams.cli.common import Subcommands, cli_settings
from driftline.streams.errors import ConfigError


def cmd_produce(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from driftline.inference.manifest import Manifest
    from driftline.inference.registry import ModelRegistry
    from driftline.schemas.codec import encode
    from driftline.streams.catalog import build_catalog
    from driftline.streams.core.records import coerce, read_input

    settings = cli_settings(args)
    binding = next((m for m in settings.models if m.name == args.model), None) if args.model else settings.models[0]
    if binding is None:
        raise ConfigError(f"--model {args.model}: not among the served models (DRIFTLINE_MODELS)")
    manifest = Manifest.read(ModelRegistry(settings.model_dir).path(binding.name, binding.version))
    catalog = build_catalog(settings)
    schema = catalog.get(manifest.request_subject, args.schema_version)
    topic = settings.requests_topic(binding)
    producer = Producer(settings.producer_config())
    sent = bad = 0
    for line, row in read_input(Path(args.file)):
        try:
            record = coerce(schema, row)
            value = encode(schema, record)
        except Exception as exc:  # noqa: BLE001 - report the line, keep going
            print(f"{args.file}:{line}: not a valid {schema.subject}: {exc}", file=sys.stderr)
            bad += 1
            continue
        key = record.get(manifest.profile.key_field)
        producer.produce(topic, value, str(key).encode() if key is not None else None)
        producer.poll(0)
        sent += 1
    left = producer.flush(30)
    print(f"produced {sent - left} records to {topic} with {schema.subject} v{schema.version}"
          f" (id {schema.id}); {bad} lines rejected")
    return 1 if bad or left else 0


def add_produce_command(sub: Subcommands) -> None:
    pr = sub.add_parser("produce", help="encode JSON-lines or CSV records and publish them as requests")
    pr.add_argument("file", help="path (.jsonl/.json or .csv), or - for stdin (JSON lines)")
    pr.add_argument("--broker")
    pr.add_argument("--model", help="served model whose requests topic and schema to use")
    pr.add_argument("--schema-version", type=int, help="write with this version of the request schema")
    pr.set_defaults(func=cmd_produce)
