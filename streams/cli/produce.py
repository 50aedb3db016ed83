"""``driftline produce``: JSON-lines or CSV records, encoded and published as requests.

A line that does not parse (not JSON, a CSV row with too few or too many
fields, a value that is not of its column's type) is reported with its line
number and column and skipped; the others are published. The broker is
waited for a short while and the requests topic must exist; every record's
delivery is then confirmed, and records the broker did not take are counted
with librdkafka's reason. Any rejected line or undelivered record makes the
exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from driftline.streams.cli.common import Subcommands, cli_settings
from driftline.streams.errors import ConfigError

DELIVERY_TIMEOUT_S = 30.0  # a record not acknowledged within this fails with librdkafka's reason


class BadLine(ValueError):
    """A line of the input that cannot become a record; the message says why, naming the column."""


def read_lines(path: str) -> str:
    """The whole input: a file, or stdin for ``-``; a missing or unreadable file is one ConfigError line."""
    if path == "-":
        return sys.stdin.read()
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such file; give a .jsonl/.json or .csv file, or - for JSON lines on stdin")
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None


def parse_rows(path: str, text: str) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, row) for each record of the input, or (line number, why not) for one that does not parse."""
    if path.lower().endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if not header:
            return
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield line, BadLine(f"the row has {len(row)} fields where the header has {len(header)} "
                                    f"({', '.join(header)})")
                continue
            yield line, dict(zip(header, row, strict=True))
        return
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, BadLine(f"not JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(value, dict):
            yield line, BadLine(f"a JSON {type(value).__name__}, not an object of field: value")
            continue
        yield line, value


def to_record(schema: Any, row: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The row converted to the schema's types and encoded; BadLine naming the column that does not fit."""
    from driftline.schemas.codec import encode
    from driftline.streams.core.records import coerce

    record: dict[str, Any] = {}
    for name, value in row.items():
        try:
            record.update(coerce(schema, {name: value}))
        except (ValueError, TypeError) as exc:
            kind = schema.field_types.get(name)
            raise BadLine(f"column {name}: {value!r} is not a valid {kind} ({exc})") from None
    try:
        return record, encode(schema, record)
    except Exception as exc:  # noqa: BLE001 - fastavro's messages name the field; keep the line's number with it
        raise BadLine(str(exc)) from None


def publish(producer: Any, topic: str, items: Iterable[tuple[bytes | None, bytes]],
            timeout_s: float = DELIVERY_TIMEOUT_S + 15) -> tuple[int, Counter[str]]:
    """Produce ``(key, value)`` pairs and wait for every delivery report: (delivered, failures by reason)."""
    delivered = 0
    failed: Counter[str] = Counter()

    def report(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            failed[err.str() if hasattr(err, "str") else str(err)] += 1

    sent = 0
    for key, value in items:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=report)
                break
            except BufferError:  # librdkafka's queue is full: let it send, then retry
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
    left = producer.flush(timeout_s)
    unreported = sent - delivered - sum(failed.values())
    if left or unreported > 0:
        failed[f"no delivery report within {timeout_s:.0f}s"] += max(left, unreported)
    return delivered, failed


def cmd_produce(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from driftline.inference.manifest import Manifest
    from driftline.inference.registry import ModelRegistry
    from driftline.streams.catalog import build_catalog
    from driftline.streams.cli.common import require_broker
    from driftline.streams.registry import request_writer

    settings = cli_settings(args)
    binding = next((m for m in settings.models if m.name == args.model), None) if args.model else settings.models[0]
    if binding is None:
        served = ", ".join(m.name for m in settings.models)
        raise ConfigError(f"--model {args.model}: not among the served models ({served}; DRIFTLINE_MODELS)")
    text = read_lines(args.file)
    manifest = Manifest.read(ModelRegistry(settings.model_dir).path(binding.name, binding.version))
    catalog = build_catalog(settings)
    topic = settings.requests_topic(binding)
    schema = request_writer(catalog, settings, manifest.request_subject, topic, args.schema_version)
    require_broker(settings, [topic])
    bad = 0

    def records() -> Iterator[tuple[bytes | None, bytes]]:
        nonlocal bad
        for line, row in parse_rows(args.file, text):
            try:
                if isinstance(row, BadLine):
                    raise row
                record, value = to_record(schema, row)
            except BadLine as exc:
                print(f"{args.file}:{line}: not a valid {schema.subject}: {exc}", file=sys.stderr)
                bad += 1
                continue
            key = record.get(manifest.profile.key_field)
            yield (str(key).encode() if key is not None else None), value

    producer = Producer({**settings.producer_config(), "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)})
    delivered, failed = publish(producer, topic, records())
    summary = (f"produced {delivered} records to {topic} with {schema.subject} v{schema.version}"
               f" (id {schema.id}); {bad} lines rejected")
    if failed:
        why = "; ".join(f"{n} × {reason}" for reason, n in failed.most_common(3))
        summary += f"; {sum(failed.values())} records not delivered ({why}) to the broker at {settings.broker}"
    print(summary)
    return 1 if bad or failed else 0


def add_produce_command(sub: Subcommands) -> None:
    pr = sub.add_parser("produce", help="encode JSON-lines or CSV records and publish them as requests")
    pr.add_argument("file", help="path (.jsonl/.json or .csv), or - for stdin (JSON lines)")
    pr.add_argument("--broker")
    pr.add_argument("--model", help="served model whose requests topic and schema to use")
    pr.add_argument("--schema-version", type=int, help="write with this version of the request schema")
    pr.set_defaults(func=cmd_produce)
