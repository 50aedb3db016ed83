"""A Confluent-compatible Schema Registry as the schema catalog's source of ids.

With ``schema_registry.url`` set, the registry's ids are the truth on the
wire: records that standard Avro serializers wrote (confluent-kafka's
``AvroSerializer``, Java's ``KafkaAvroSerializer``, Kafka Connect) are read
by looking their writer id up once, and driftline's own records are framed
with the ids its schemas are registered under, so Confluent deserializers,
ksqlDB and sink connectors read every driftline topic.

Lookups never happen per record: the score path asks about a batch's new
ids on its consumer thread before decoding (``BatchDecoder.prepare``), the
answers are kept, and an id the registry does not have is not asked again
for ``unknown_ttl_s``. An unreachable registry is retried with backoff for
``wait_s``, then the records of the ids it could not answer go to the dead
letters as ``registry_unavailable``; ``problem`` says why for ``/readyz``.

Talks through confluent-kafka's ``SchemaRegistryClient``; imported by the
processes that have a registry configured (no import cost for the others).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import fastavro

from driftline.schemas.catalog import SchemaCatalog, WireSchema, strip_logical_types
from driftline.schemas.errors import SchemaError, SchemaUnavailable
from driftline.streams.errors import ConfigError
from driftline.streams.settings import SchemaRegistryConfig, Settings

log = logging.getLogger(__name__)

#: driftline's output schemas and the topic roles they are written to
OUTPUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("driftline.Prediction", ("predictions", "predictions.shadow")),
    ("driftline.Scored", ("scored",)),
    ("driftline.Labeled", ("labeled",)),
    ("driftline.Alert", ("alerts",)),
    ("driftline.RetrainRequest", ("retrain",)),
    ("driftline.Feedback", ("feedback",)),
    ("driftline.Explanation", ("explanations",)),
)

NOT_FOUND = 404
#: the registry's answer that a schema breaks its subject's compatibility rule
INCOMPATIBLE = 409
_MAX_UNKNOWN = 10_000  # ids remembered as missing (the oldest forgotten first): bounded under any flood
#: new ids asked about per second, with bursts up to LOOKUP_BURST: random ids cannot turn every record into a
#: request (an id over the budget is dead-lettered as unknown_schema and asked about again later)
LOOKUPS_PER_S = 20.0
LOOKUP_BURST = 50.0
#: how long an id over the budget waits before it is asked about again
DEFERRED_S = 5.0
#: how often a worker checks that the registry still holds its output schemas under the ids it writes
VERIFY_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Registered:
    """One schema version under one subject, as the registry holds it."""

    subject: str
    id: int
    new: bool  # registered now (False: the registry had it already)


def public_url(url: str) -> str:
    """``url`` without credentials, for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # a port that is no number: say nothing of the rest
        return "(an unparsable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _client(config: SchemaRegistryConfig) -> Any:
    """confluent-kafka's client, with credentials as basic auth: never in the URL (its HTTP library logs URLs)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    url = str(config.url)
    parts = urlsplit(url)
    conf: dict[str, Any] = {"url": public_url(url), "timeout": config.timeout_s, "max.retries": 0}
    if parts.username is not None:
        if config.username is not None:
            raise ConfigError("schema_registry: give the credentials in the URL or in username and password, "
                              "not both")
        conf["basic.auth.user.info"] = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    elif config.username is not None and config.password is not None:
        conf["basic.auth.user.info"] = f"{config.username}:{config.password.get_secret_value()}"
    if config.ca_file is not None:
        conf["ssl.ca.location"] = str(config.ca_file)
    for name in ("httpx", "httpx2"):  # one INFO line per request, URL and all: not for a worker's log
        logging.getLogger(name).setLevel(logging.WARNING)
    return SchemaRegistryClient(conf)


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a registry error; None for a transport error (nothing answered)."""
    return getattr(exc, "http_status_code", None)


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


class SchemaRegistry:
    """The catalog's :class:`~driftline.schemas.catalog.SchemaSource` when a registry is configured.

    Thread-safe: the consumer thread looks ids up while tools or the
    feedback thread may too.
    """

    def __init__(self, config: SchemaRegistryConfig, *, client: Any = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if config.url is None:
            raise ValueError("SchemaRegistry needs schema_registry.url")
        self.config = config
        self.url = public_url(config.url)
        self._client = client if client is not None else _client(config)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # id → (when the registry said no, for how long that holds, what to tell); oldest first
        self._missing: OrderedDict[int, tuple[float, float, str]] = OrderedDict()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = 0.1
        self._tokens = LOOKUP_BURST
        self._refilled = clock()
        self.problem: str | None = None  # why the registry cannot be used now (for /readyz); None when it can
        self.lookups = 0  # requests made for unknown ids (the negative cache keeps this small under garbage)
        self.written: dict[int, WireSchema] = {}  # ids this process writes with → the schema it means by them
        self._verified = clock()
        self._checking = threading.Lock()  # one re-check at a time, whoever asks

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaRegistry | None:
        return cls(settings.schema_registry) if settings.schema_registry.url else None

    # -- start ------------------------------------------------------------------------

    def check(self) -> None:
        """One request at start; :class:`ConfigError` with one line when the registry does not answer."""
        try:
            self._client.get_subjects()
        except Exception as exc:  # noqa: BLE001 - transport errors, HTTP errors, TLS errors: all one line
            status = _status(exc)
            hint = ("check schema_registry.username and password" if status in (401, 403) else
                    "check schema_registry.ca_file" if "CERTIFICATE" in str(exc).upper() else
                    "start it or fix schema_registry.url (DRIFTLINE_SCHEMA_REGISTRY__URL)")
            raise ConfigError(f"schema registry at {self.url} does not answer: {_why(exc)}; {hint}") from None

    def recheck(self) -> str | None:
        """Ask the registry again while :attr:`problem` is set, and every :data:`VERIFY_EVERY_S` check that it
        still holds the schemas this process writes under their ids; the problem that remains.

        Called off the event loop (a ``/readyz`` probe starts it and answers with
        what is known); concurrent calls do not pile up: one runs, the others
        return at once.
        """
        if not self._checking.acquire(blocking=False):
            return self.problem
        try:
            due = self._clock() - self._verified >= VERIFY_EVERY_S
            if self.problem is None and not due:
                return None
            try:
                self._client.get_subjects()
                changed = self._changed_ids() if due or self.problem else None
            except Exception as exc:  # noqa: BLE001 - still down: keep saying why
                with self._lock:
                    self.problem = f"schema registry at {self.url} is unreachable: {_why(exc)}"
                return self.problem
            with self._lock:
                self._verified = self._clock()
                if changed is not None:
                    self.problem = changed  # an id that now means something else: not ready until restarted
                    log.error("%s", changed)
                    return changed
                self._up()
                self._next_try = 0.0
            return None
        finally:
            self._checking.release()

    def _changed_ids(self) -> str | None:
        """Why an id this process writes with no longer means its schema there (a registry restarted empty,
        a subject deleted), or None when all still do."""
        self._client.clear_caches()  # the client keeps what an id meant: ask the registry itself
        for sid, schema in list(self.written.items()):
            try:
                found = self._client.get_schema(sid)
            except Exception as exc:
                if _status(exc) != NOT_FOUND:
                    raise  # unreachable: the caller says so
                same = False
            else:
                try:
                    same = json.loads(found.schema_str) == dict(schema.raw)
                except (TypeError, ValueError):
                    same = False
            if not same:
                return (f"the schema registry at {self.url} no longer holds {schema.subject} under id {sid}, the id "
                        "this worker writes it with (a registry that lost its storage?): restart the worker to "
                        "register its schemas again")
        return None

    # -- reading: ids the files do not know ------------------------------------------------

    def fetch(self, sid: int) -> WireSchema | None:
        """The schema registered as ``sid``; None when the registry has no such id (or not an Avro record).

        An unreachable registry is retried with backoff for ``wait_s`` from
        the first failure of an outage; after that, one try per backoff
        period, and :class:`SchemaUnavailable` at once in between.
        """
        with self._lock:
            now = self._clock()
            seen = self._missing.get(sid)
            if seen is not None and now - seen[0] < seen[1]:
                return None
            if self._down_since is not None and now < self._next_try:
                raise SchemaUnavailable(self._unavailable(sid))
            if not self._take_token(now):
                self._forget_later(sid, now, f"schema id {sid} was not looked up in the schema registry: over "
                                   f"{LOOKUPS_PER_S:g} new ids a second (a flood of unknown ids?); it is asked "
                                   f"about again after {DEFERRED_S:g} s", DEFERRED_S)
                return None
            deadline = (self._down_since if self._down_since is not None else now) + self.config.wait_s
            delay = 0.1
            while True:
                self.lookups += 1
                try:
                    found = self._client.get_schema(sid)
                except Exception as exc:  # noqa: BLE001 - httpx transport errors and registry errors alike
                    status = _status(exc)
                    if status == NOT_FOUND:
                        self._up()
                        self._forget_later(sid, now, f"schema id {sid} is not in the schema registry at {self.url}; "
                                           "the producer must register its schema there (Confluent serializers "
                                           "do so unless auto.register.schemas is off)")
                        return None
                    self._down(f"schema registry at {self.url} is unreachable: {_why(exc)}")
                else:
                    self._up()
                    return self._parse(sid, found, now)
                if self._clock() + delay > deadline:
                    # past the wait: one try per backoff period, the period doubling while the outage lasts
                    self._next_try = self._clock() + self._backoff
                    self._backoff = min(self._backoff * 2, 30.0)
                    raise SchemaUnavailable(self._unavailable(sid))
                self._sleep(delay)
                delay = min(delay * 2, 5.0)

    def _take_token(self, now: float) -> bool:
        self._tokens = min(LOOKUP_BURST, self._tokens + (now - self._refilled) * LOOKUPS_PER_S)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def explain_unknown(self, sid: int) -> str:
        seen = self._missing.get(sid)
        if seen is not None:
            return seen[2]
        return f"schema id {sid} is not in the schema registry at {self.url}, nor in driftline's schema files"

    def _parse(self, sid: int, found: Any, now: float) -> WireSchema | None:
        kind = getattr(found, "schema_type", None) or "AVRO"
        if kind != "AVRO":
            self._forget_later(sid, now, f"schema id {sid} is a {kind} schema; driftline reads Avro")
            return None
        if getattr(found, "references", None):
            self._forget_later(sid, now, f"schema id {sid} uses schema references, which driftline does not "
                                         "resolve; register the request schema self-contained")
            return None
        try:
            raw = json.loads(found.schema_str)
            if not isinstance(raw, dict) or raw.get("type") != "record":
                raise ValueError("the top-level type is not a record")
            parsed = fastavro.parse_schema(raw)
            fast = fastavro.parse_schema(strip_logical_types(raw))
        except Exception as exc:  # noqa: BLE001 - whatever the registry holds, one record's failure
            self._forget_later(sid, now, f"schema id {sid} in the registry is not a usable Avro record: {_why(exc)}")
            return None
        subject = f"{raw['namespace']}.{raw['name']}" if raw.get("namespace") else str(raw["name"])
        log.info("schema id %d from the registry: %s", sid, subject)
        return WireSchema(sid, subject, 0, raw, parsed, fast)

    def _forget_later(self, sid: int, now: float, why: str, hold_s: float | None = None) -> None:
        """Remember that ``sid`` is not to be asked about for ``hold_s`` (default ``unknown_ttl_s``)."""
        self._missing.pop(sid, None)
        self._missing[sid] = (now, self.config.unknown_ttl_s if hold_s is None else hold_s, why)
        while len(self._missing) > _MAX_UNKNOWN:
            self._missing.popitem(last=False)

    def _down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            log.warning("%s; retrying for up to %.0f s", why, self.config.wait_s)
        self.problem = why

    def _up(self) -> None:
        if self._down_since is not None:
            log.info("schema registry at %s answers again", self.url)
        self._down_since = None
        self._backoff = 0.1
        self.problem = None

    def _unavailable(self, sid: int) -> str:
        return f"{self.problem or 'schema registry unavailable'} (looking up schema id {sid})"

    # -- writing: the ids of driftline's own schemas ---------------------------------------

    def register(self, subject: str, schema: WireSchema) -> Registered:
        """Register ``schema`` under ``subject`` (idempotent); :class:`SchemaError` when its rule refuses it."""
        from confluent_kafka.schema_registry import Schema

        known = self.lookup(subject, schema)
        if known is not None:
            return Registered(subject, known, False)
        try:
            return Registered(subject, int(self._client.register_schema(subject, Schema(json.dumps(schema.raw),
                                                                                        "AVRO"))), True)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == INCOMPATIBLE:
                raise SchemaError(
                    f"{schema.subject} v{schema.version} is incompatible with subject {subject} in the schema "
                    f"registry (rule {self.compatibility(subject)}): {_why(getattr(exc, 'error_message', exc))}; "
                    "make the change compatible (add fields with defaults) or give it a new subject"
                ) from None
            raise self._failed(exc, f"registering {schema.subject} under subject {subject}") from None

    def lookup(self, subject: str, schema: WireSchema) -> int | None:
        """The id ``schema`` is registered under in ``subject``; None when it is not."""
        from confluent_kafka.schema_registry import Schema

        try:
            return int(self._client.lookup_schema(subject, Schema(json.dumps(schema.raw), "AVRO")).schema_id)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == NOT_FOUND:
                return None
            raise self._failed(exc, f"looking up {schema.subject} under subject {subject}") from None

    def compatibility(self, subject: str) -> str:
        """The rule that refused a schema under ``subject``: its own, else the registry's; ``unknown`` if neither says.

        A subject without a rule of its own answers 404 on Confluent and NONE
        on Apicurio; after a refusal, NONE cannot be the rule that applied.
        """
        for ask in (lambda: self._client.get_compatibility(subject), self._client.get_compatibility):
            try:
                level = str(getattr(answer := ask(), "compatibility_level", answer))
            except Exception:  # noqa: BLE001,S112 - no rule of its own: ask the registry's default next
                continue
            if level.upper() != "NONE":
                return level
        return "unknown"

    def _failed(self, exc: BaseException, doing: str) -> ConfigError:
        return ConfigError(f"schema registry at {self.url} failed while {doing}: {_why(exc)}")


def subjects_of(settings: Settings, record: str, roles: tuple[str, ...]) -> list[str]:
    """The subjects ``record`` is registered under, one per topic it is written to (deduplicated, in order)."""
    subjects = [settings.schema_registry.subject(settings.topic(role), record) for role in roles]
    return list(dict.fromkeys(subjects))


def use_registry_ids(catalog: SchemaCatalog, registry: SchemaRegistry, settings: Settings, *,
                     register: bool) -> list[Registered]:
    """Give driftline's output schemas their registry ids (registering them first when ``register``).

    Every version the files hold is registered, oldest first, so the
    registry's history matches the files' and its compatibility rule sees
    each step. Raises :class:`ConfigError` when a schema is not registered
    and ``register`` is off, :class:`SchemaError` when a rule refuses one.
    """
    done: list[Registered] = []
    for record, roles in OUTPUTS:
        done += register_versions(catalog, registry, record, subjects_of(settings, record, roles), register=register)
    return done


def register_versions(catalog: SchemaCatalog, registry: SchemaRegistry, record: str, subjects: list[str], *,
                      register: bool, up_to: int | None = None) -> list[Registered]:
    """Register (or look up) every version of ``record`` under ``subjects`` (up to version ``up_to``), oldest first;
    each is then written with its id."""
    done: list[Registered] = []
    versions = [v for v in catalog.versions(record) if up_to is None or v.version <= up_to]
    if not versions:
        raise ConfigError(f"no schema file for {record}; add its .avsc to a folder in schema_dirs")
    for schema in versions:
        ids: list[int] = []
        for subject in subjects:
            if register:
                got = registry.register(subject, schema)
            else:
                sid = registry.lookup(subject, schema)
                if sid is None:
                    if schema is not versions[-1]:
                        continue  # an older version nobody registered: nothing writes it
                    raise ConfigError(
                        f"{record} v{schema.version} is not registered under subject {subject} in the schema "
                        f"registry at {registry.url}; run `driftline schemas register` (schema_registry.auto_register "
                        "is off)")
                got = Registered(subject, sid, False)
            done.append(got)
            ids.append(got.id)
        if ids:
            written = catalog.assign(schema, ids[0])
            registry.written[ids[0]] = written
    return done


def request_writer(catalog: SchemaCatalog, settings: Settings, subject: str, topic: str,
                   version: int | None = None) -> WireSchema:
    """The request schema a producer writes to ``topic`` with, at its registry id when a registry is configured.

    Versions up to the one written are registered (or looked up, without
    ``auto_register``) under ``topic``'s subject, oldest first.
    """
    schema = catalog.get(subject, version)
    registry = catalog.source
    if not isinstance(registry, SchemaRegistry):
        return schema
    register_versions(catalog, registry, subject, [settings.schema_registry.subject(topic, subject)],
                      register=settings.schema_registry.auto_register, up_to=schema.version)
    return catalog.get(subject, schema.version)
