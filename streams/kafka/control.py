"""The control topic ``{ns}.models``: what serves, one JSON :class:`Deployment` per model, last record per key wins.

Every reader reads all of it, not a share: its own consumer with no group
commits, read from offset 0 to the end, then (the worker) followed. Writers
(``driftline model …``, the trainer) key each record by the model's name, so
compaction keeps each model's last deployment. This module is the one place
that reads, follows and writes the topic.

Each record also says who changed it and why (``changed_by``, ``reason``);
with a control key it is signed, and readers refuse what is not signed with
it (:mod:`driftline.streams.core.signing`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer

from driftline.inference.deployment import Deployment
from driftline.inference.errors import ModelError
from driftline.inference.registry import ModelRegistry
from driftline.streams.core.poison import DETAIL_CHARS, BadRecord, Skip, SkipLog, load_json
from driftline.streams.core.signing import Verdict, sign, verify
from driftline.streams.errors import BrokerError, ConfigError
from driftline.streams.kafka.topics import read_to_end, reader_config
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)
KEEP_SKIPPED = 20  # skipped control records kept for alerts between two drains (all are counted)


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """One deployment record as written: the deployment, who changed it and why, and its signature's verdict."""

    deployment: Deployment
    changed_by: str
    reason: str
    signature: Verdict


def parse_control(key: bytes | None, value: bytes | None, secret: bytes | None = None,
                  topic: str = "") -> ControlRecord | Skip:
    """A control record, or why it is not one; never raises, whatever the bytes.

    The key must be the model's name: the topic is compacted by key, so a
    record keyed otherwise would not replace the model's last deployment.
    With ``secret`` (the control key), a record not signed with it is
    refused (``unsigned_control_record``, ``forged_control_record``).
    """
    if key is None:
        return Skip("no_key", "a control record must be keyed by its model's name")
    try:
        body = load_json(value)
        dep = Deployment.from_dict(body)
    except BadRecord as exc:
        return exc.skip()
    except ModelError as exc:
        return Skip("invalid_deployment", str(exc)[:DETAIL_CHARS])
    if dep.model != key.decode(errors="replace"):
        return Skip("key_mismatch", f"a deployment of model {dep.model!r} keyed {key[:80]!r}; "
                                    "the key must be the model's name")
    verdict = verify(topic, key, body, secret)
    if verdict == "unsigned":
        return Skip("unsigned_control_record", f"a deployment of {dep.model} ({dep.describe()}) without a "
                    "signature, and this worker has a control key: written by something without the key")
    if verdict == "forged":
        return Skip("forged_control_record", f"a deployment of {dep.model} ({dep.describe()}) whose signature "
                    "does not match: altered, or signed with another key")
    changed_by, reason = body.get("changed_by"), body.get("reason")
    return ControlRecord(dep, printable(changed_by, 200) if isinstance(changed_by, str) else "unknown",
                         printable(reason, DETAIL_CHARS) if isinstance(reason, str) else "", verdict)


def printable(text: str, limit: int) -> str:
    """``text`` safe to print and log: control characters (terminal escapes, newlines) and unpaired surrogates
    replaced, cut to ``limit`` characters (who and why come from a topic anyone with access can write)."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() else "?" for c in clean)[:limit]


def parse_deployment(key: bytes | None, value: bytes | None, secret: bytes | None = None,
                     topic: str = "") -> Deployment | Skip:
    """:func:`parse_control`, the deployment only."""
    got = parse_control(key, value, secret, topic)
    return got.deployment if isinstance(got, ControlRecord) else got


class ControlRules:
    """What each record of the control topic is worth to a reader, in topic order.

    :func:`parse_control` (the deployment, its signature), and with a control
    key one rule more: a signed record older than the last one accepted for
    its model is a replay (an old, withdrawn deployment), refused.
    """

    def __init__(self, topic: str, secret: bytes | None) -> None:
        self.topic = topic
        self.secret = secret
        self.latest_at: dict[str, int] = {}  # model → updated_at of its last accepted record (replays are older)

    def judge(self, key: bytes | None, value: bytes | None) -> ControlRecord | Skip:
        got = parse_control(key, value, self.secret, self.topic)
        if isinstance(got, Skip):
            return got
        dep = got.deployment
        last = self.latest_at.get(dep.model)
        if self.secret is not None and last is not None and dep.updated_at < last:
            return Skip("stale_control_record", f"a signed deployment of {dep.model} ({dep.describe()}) from "
                        f"{dep.updated_at}, older than the one applied ({last}): a replayed record; write a new one "
                        "with driftline model promote/rollback")
        self.latest_at[dep.model] = dep.updated_at
        return got


class ControlFollower:
    """Reads ``{ns}.models`` from the beginning with its own consumer (a throw-away group, no commits).

    Records that are not deployments are skipped (logged with their
    position) and kept in :attr:`skips`, whose :meth:`SkipLog.drain` gives
    the worker what to count and alert about, at start and while following.
    """

    def __init__(self, conf: Mapping[str, Any], topic: str, secret: bytes | None = None) -> None:
        self.topic = topic
        self.rules = ControlRules(topic, secret)
        self.audit: dict[str, dict[str, str]] = {}  # model → who made its last deployment record, and why
        self.signed_seen = False  # whether any record on the topic carries a signature
        self.skips = SkipLog(log, keep=KEEP_SKIPPED)
        self._consumer = Consumer({**reader_config(conf, f"driftline-control-{uuid.uuid4().hex[:12]}"),
                                   "fetch.wait.max.ms": 100})

    def read_to_end(self, timeout_s: float = 30.0) -> dict[str, Deployment]:
        """Read the topic from offset 0 to its end (the consumer stays there to follow it): the latest per model."""
        latest: dict[str, Deployment] = {}
        for msg in read_to_end(self._consumer, self.topic, timeout_s=timeout_s,
                               missing=" (the control topic); run driftline topics create"):
            if (dep := self._parse(msg)) is not None:
                latest[dep.model] = dep
        return latest

    def poll(self, timeout_s: float) -> list[Deployment]:
        """New deployments since the last call (after :meth:`read_to_end`)."""
        out = []
        for msg in self._consumer.consume(100, timeout=timeout_s):
            if msg.error() is None and (dep := self._parse(msg)) is not None:
                out.append(dep)
        return out

    def _parse(self, msg: Any) -> Deployment | None:
        self.signed_seen = self.signed_seen or _signed(msg.value())
        got = self.rules.judge(msg.key(), msg.value())
        if isinstance(got, Skip):
            self.skips.skip(self.topic, msg.partition(), msg.offset(), msg.key(), got)
            return None
        self.audit[got.deployment.model] = {"actor": got.changed_by, "reason": got.reason}
        return got.deployment

    def close(self) -> None:
        self._consumer.close()


def read_deployments(settings: Settings, timeout_s: float = 15.0, *, writing: bool = False
                     ) -> dict[str, Deployment]:
    """The latest deployment of every model on the control topic (models never deployed are absent).

    ``writing``: the caller is about to write a deployment; without a control
    key, a topic that holds signed records means the workers check
    signatures and would refuse it, so :class:`ConfigError` says so instead.
    """
    secret = settings.control_secret()
    follower = ControlFollower(settings.confluent(log_level=0), settings.topic("models"), secret)
    try:
        found = follower.read_to_end(timeout_s)
    finally:
        follower.close()
    if writing and secret is None and follower.signed_seen:
        raise ConfigError(f"{settings.topic('models')} holds signed deployment records: the workers check "
                          "signatures and would refuse an unsigned change; set DRIFTLINE_CONTROL_KEY (or "
                          "DRIFTLINE_CONTROL_KEY_FILE) to the workers' key")
    return found


def configured(settings: Settings, name: str) -> Deployment:
    """What serves a model before any deployment record: the configured version."""
    binding = next((b for b in settings.models if b.name == name), None)
    if binding is None:
        served = ", ".join(b.name for b in settings.models)
        raise ConfigError(f"model {name} is not served (DRIFTLINE_MODELS serves {served})")
    path = ModelRegistry(settings.model_dir).path(name, binding.version)
    return Deployment(name, path.name)


def current_deployment(settings: Settings, name: str, fallback: Deployment | None = None,
                       timeout_s: float = 15.0, *, writing: bool = False) -> Deployment:
    """The control topic's record for ``name``; without one, ``fallback`` or the configured version."""
    return (read_deployments(settings, timeout_s, writing=writing).get(name) or fallback
            or configured(settings, name))


def _signed(value: bytes | None) -> bool:
    """Whether a record's bytes carry a signature field (without trusting anything else in them)."""
    return value is not None and b'"signature"' in value


def write_deployment(producer: Producer, settings: Settings, dep: Deployment, timeout_s: float = 15.0, *,
                     reason: str = "", actor: str | None = None) -> None:
    """Write ``dep`` keyed by its model's name, with who and why (signed with the control key), and wait for the broker.
    """
    key, topic = dep.model.encode(), settings.topic("models")
    body: dict[str, Any] = {**dep.to_dict(), "changed_by": actor or settings.actor(), "reason": reason}
    secret = settings.control_secret()
    producer.produce(topic, json.dumps(sign(topic, key, body, secret) if secret else body).encode(), key)
    if producer.flush(timeout_s) != 0:
        raise BrokerError(f"could not write the deployment of {dep.model} to {settings.topic('models')} "
                          f"at {settings.broker}; is the broker up?")


def read_history(settings: Settings, name: str, timeout_s: float = 15.0) -> list[ControlRecord | Skip]:
    """Every control record of model ``name`` still on the topic, oldest first (compaction keeps at least the last)."""
    consumer = Consumer({**reader_config(settings.confluent(log_level=0), f"driftline-history-{uuid.uuid4().hex[:12]}"),
                         "fetch.wait.max.ms": 100})
    rules = ControlRules(settings.topic("models"), settings.control_secret())  # as a worker judges them
    out: list[ControlRecord | Skip] = []
    try:
        for msg in read_to_end(consumer, rules.topic, timeout_s=timeout_s,
                               missing=" (the control topic); run driftline topics create"):
            if msg.key() == name.encode():
                out.append(rules.judge(msg.key(), msg.value()))
    finally:
        consumer.close()
    return out
