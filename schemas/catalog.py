"""Schema catalog: ``.avsc`` files with stable ids, subjects and versions.

A file ``<stem>.v<N>.avsc`` is version ``N`` of the subject named by the
record's full name. Its id is derived from the schema's Parsing Canonical
Form (first 31 bits of its SHA-256), so every worker and producer computes
the same id for the same schema without a shared counter; a real Confluent
Schema Registry assigns its own ids and is the source of truth there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from driftline.schemas.errors import SchemaError

_VERSIONED = re.compile(r"^(?P<stem>.+)\.v(?P<version>\d+)$")


@dataclass(frozen=True, slots=True, eq=False)
class WireSchema:
    """One registered schema: its id, subject, version and parsed forms.

    ``parsed`` keeps logical types (timestamps become datetimes) for tools;
    ``fast`` has them stripped, for the hot path, where converting every
    timestamp to a datetime costs a third of the decode time.
    """

    id: int
    subject: str
    version: int
    raw: Mapping[str, Any]
    parsed: Any = field(repr=False)
    fast: Any = field(repr=False)

    @property
    def field_types(self) -> dict[str, Any]:
        """Top-level field name → Avro type as written in the schema."""
        return {f["name"]: f["type"] for f in self.raw["fields"]}


def schema_id(raw: Mapping[str, Any]) -> int:
    """Stable id of a schema: 31 bits of the SHA-256 of its canonical form."""
    canonical = to_parsing_canonical_form(dict(raw)).encode()
    return int.from_bytes(hashlib.sha256(canonical).digest()[:4], "big") & 0x7FFF_FFFF


def strip_logical_types(node: Any) -> Any:
    """Copy of a schema without ``logicalType`` annotations (same binary encoding)."""
    if isinstance(node, dict):
        return {k: strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [strip_logical_types(v) for v in node]
    return node


def builtin_schema_dir() -> Path:
    """The ``.avsc`` files shipped with driftline (envelopes and the example request)."""
    return Path(str(resources.files("driftline.schemas") / "avro"))


class SchemaCatalog:
    """Schemas by id and by subject/version, built once from ``.avsc`` files.

    Examples
    --------
    >>> catalog = SchemaCatalog.from_dirs([builtin_schema_dir()])
    >>> catalog.latest("driftline.Prediction").version
    1
    """

    def __init__(self, schemas: Iterable[WireSchema]) -> None:
        self._by_id: dict[int, WireSchema] = {}
        self._subjects: dict[str, dict[int, WireSchema]] = {}
        for s in schemas:
            other = self._by_id.get(s.id)
            if other is not None and other.raw != s.raw:
                raise SchemaError(
                    f"schema id collision between {other.subject} v{other.version} and "
                    f"{s.subject} v{s.version}; rename one of the schemas"
                )
            self._by_id[s.id] = s
            versions = self._subjects.setdefault(s.subject, {})
            if s.version in versions and versions[s.version].id != s.id:
                raise SchemaError(f"two different files claim {s.subject} version {s.version}")
            versions[s.version] = s

    @classmethod
    def from_dirs(cls, dirs: Iterable[Path | str]) -> SchemaCatalog:
        """Read every ``*.avsc`` file under the given folders."""
        schemas = []
        for d in dirs:
            path = Path(d)
            if not path.is_dir():
                raise SchemaError(f"schema folder {path} does not exist; fix the schema_dirs setting")
            for file in sorted(path.glob("*.avsc")):
                schemas.append(load_schema_file(file))
        return cls(schemas)

    def by_id(self, sid: int) -> WireSchema | None:
        return self._by_id.get(sid)

    def get(self, subject: str, version: int | None = None) -> WireSchema:
        """A subject's given version, or its latest when ``version`` is None."""
        versions = self._subjects.get(subject)
        if not versions:
            known = ", ".join(sorted(self._subjects)) or "none"
            raise SchemaError(f"no schema for subject {subject!r}; known subjects: {known}")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise SchemaError(f"subject {subject!r} has no version {version}; has {sorted(versions)}")
        return versions[version]

    def latest(self, subject: str) -> WireSchema:
        return self.get(subject)

    def subjects(self) -> list[str]:
        return sorted(self._subjects)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id.values())


def load_schema_file(file: Path) -> WireSchema:
    """Parse one ``.avsc`` file into a :class:`WireSchema`."""
    try:
        raw = json.loads(file.read_text())
        parsed = fastavro.parse_schema(raw)
        fast = fastavro.parse_schema(strip_logical_types(raw))
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"{file}: not a valid Avro schema ({exc}); fix the file") from exc
    if raw.get("type") != "record":
        raise SchemaError(f"{file}: top-level type must be a record")
    subject = f"{raw['namespace']}.{raw['name']}" if raw.get("namespace") else raw["name"]
    m = _VERSIONED.match(file.name.removesuffix(".avsc"))
    version = int(m["version"]) if m else 1
    return WireSchema(schema_id(raw), subject, version, raw, parsed, fast)
