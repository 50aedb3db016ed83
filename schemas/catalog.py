"""Schema catalog: ``.avsc`` files with stable ids, subjects and versions.

A file ``<stem>.v<N>.avsc`` is version ``N`` of the subject named by the
record's full name. Without a registry its id is derived from the schema
itself (31 bits of the SHA-256 of its whole JSON, keys sorted), so every
worker and producer computes the same id for the same schema without a
shared counter. The whole JSON, not the Parsing Canonical Form, because the
canonical form drops defaults, docs and logical types: a version that
changes only those is a legitimate evolution and needs an id of its own.
Ids from the canonical form (what driftline wrote before) stay readable as
aliases.

With a Confluent-compatible Schema Registry the registry's ids are the truth:
a :class:`SchemaSource` (``driftline.streams.registry``) fetches the ids the
files do not know, and :meth:`SchemaCatalog.assign` gives a schema the id
the registry holds it under, for writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

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
    """Stable id of a schema without a registry: 31 bits of the SHA-256 of its whole JSON, keys sorted.

    Two files that differ in a default, a doc or a logical type get two ids.
    """
    return _id_of(json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def canonical_id(raw: Mapping[str, Any]) -> int:
    """The id earlier driftline versions gave a schema: the same hash of its Parsing Canonical Form.

    Schemas with one canonical form encode identically, so a record framed
    with this id reads the same whichever of them the alias points to.
    """
    return _id_of(to_parsing_canonical_form(dict(raw)))


def _id_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFF_FFFF


class SchemaSource(Protocol):
    """Where ids the files do not know are looked up (a Schema Registry)."""

    def fetch(self, sid: int) -> WireSchema | None:
        """The schema registered under ``sid``; None when the source has no such id.

        Raises :class:`SchemaUnavailable` when the source cannot be reached.
        """
        ...

    def explain_unknown(self, sid: int) -> str:
        """What to tell about a record framed with an id that neither the files nor the source know."""
        ...


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

    def __init__(self, schemas: Iterable[WireSchema], source: SchemaSource | None = None) -> None:
        self._by_id: dict[int, WireSchema] = {}
        self._subjects: dict[str, dict[int, WireSchema]] = {}
        self.source = source
        for s in schemas:
            other = self._by_id.get(s.id)
            if other is not None and other.raw != s.raw:
                raise SchemaError(
                    f"schema id collision between {other.subject} v{other.version} and "
                    f"{s.subject} v{s.version} (two different schemas whose hashes share 31 bits); "
                    "add or remove a doc in one of them"
                )
            self._by_id[s.id] = s
            versions = self._subjects.setdefault(s.subject, {})
            if s.version in versions and versions[s.version].id != s.id:
                raise SchemaError(f"two different files claim {s.subject} version {s.version}")
            versions[s.version] = s
        self._files = {s.id: s for s in self._by_id.values()}  # by hash id, whatever id they are written with later
        # Aliases: what earlier versions framed records with. Same canonical form, same bytes: the
        # latest version that has it reads them; an alias never hides a real id.
        for s in sorted(self._by_id.values(), key=lambda w: w.version):
            alias = canonical_id(s.raw)
            if alias not in self._by_id or self._by_id[alias].id != alias:
                self._by_id[alias] = s

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
        """The schema of ``sid`` if this process knows it already (no lookup: the hot path's call)."""
        return self._by_id.get(sid)

    def resolve(self, sid: int) -> WireSchema | None:
        """:meth:`by_id`, else the source's answer (kept); None when neither knows ``sid``.

        Raises :class:`SchemaUnavailable` when the source cannot be asked.
        """
        known = self._by_id.get(sid)
        if known is not None or self.source is None:
            return known
        fetched = self.source.fetch(sid)
        if fetched is not None:
            local = self._files.get(schema_id(fetched.raw))  # one of our files: its subject and version
            if local is not None:
                fetched = dataclasses.replace(local, id=sid)
            self.add(fetched)
        return fetched

    def add(self, schema: WireSchema) -> None:
        """Know ``schema`` by its id from now on (a schema the source fetched); subjects' versions do not change."""
        self._by_id[schema.id] = schema

    def assign(self, schema: WireSchema, sid: int) -> WireSchema:
        """Write ``schema`` with id ``sid`` (the registry's) from now on; its own id stays readable.

        Returns the re-numbered schema, which :meth:`get` and :meth:`latest` return from now on.
        """
        renumbered = dataclasses.replace(schema, id=sid)
        self._by_id[sid] = renumbered
        self._subjects[schema.subject][schema.version] = renumbered
        return renumbered

    def versions(self, subject: str) -> list[WireSchema]:
        """Every version of ``subject`` the files hold, oldest first (registered in this order)."""
        return [v for _, v in sorted(self._subjects.get(subject, {}).items())]

    def explain_unknown(self, sid: int) -> str:
        """Why ``sid`` is not known, and what helps."""
        if self.source is not None:
            return self.source.explain_unknown(sid)
        return (f"schema id {sid} is not one of driftline's schema files; add the writer's .avsc to a folder "
                "in schema_dirs (DRIFTLINE_SCHEMA_DIRS), or set schema_registry.url "
                "(DRIFTLINE_SCHEMA_REGISTRY__URL) if producers use a Schema Registry")

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
        """Each schema the files hold, once, at its current id."""
        return iter([v for versions in self._subjects.values() for v in versions.values()])


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
