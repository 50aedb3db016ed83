"""confluent-kafka helpers: topic creation and reading a topic to its end.

The embedded broker answers "latest offset" wrongly, so nothing here trusts
it: a topic is read to its end by waiting for each partition's EOF event,
which librdkafka derives from the high watermark returned with fetched data.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.streams.errors import BrokerError, ConfigError
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)


def reader_config(conf: Mapping[str, Any], group: str = "driftline-reader") -> dict[str, Any]:
    """A consumer that reads a topic without committing: from the earliest offset, told when it reaches an end.

    Readers assign partitions themselves or read to the end and stop; the
    group only names them in the broker's logs. ``conf``: the client settings.
    """
    return {**conf, "group.id": group, "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed"}


def create_topics(conf: Mapping[str, Any], partitions: Mapping[str, int], timeout_s: float = 15.0,
                  configs: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create missing topics with explicit partition counts (and topic ``configs``); return those created."""
    admin = AdminClient(dict(conf))
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach the broker at {conf.get('bootstrap.servers')}: {exc.args[0]}; "
                          "check DRIFTLINE_BROKER and the DRIFTLINE_KAFKA__* security settings") from exc
    configs = configs or {}
    wanted = [NewTopic(t, num_partitions=n, replication_factor=-1, config=dict(configs.get(t, {})))
              for t, n in partitions.items() if t not in existing]
    created = []
    for topic, future in (admin.create_topics(wanted, request_timeout=timeout_s) if wanted else {}).items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {topic}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(t in topics and len(topics[t].partitions) >= 1 for t in partitions):
            return created
        time.sleep(0.05)
    raise BrokerError(f"topics did not appear within {timeout_s:.0f}s: {sorted(partitions)}")


CHECK_TLS = ("check DRIFTLINE_KAFKA__SSL_CA_FILE (the CA that signed the broker's certificate) and, for mutual "
             "TLS, DRIFTLINE_KAFKA__SSL_CERT_FILE and ..._SSL_KEY_FILE")
CHECK_CLIENT_CERT = ("the broker refused this client's certificate, or its lack of one: check "
                     "DRIFTLINE_KAFKA__SSL_CERT_FILE and ..._SSL_KEY_FILE (signed by a CA the broker trusts)")
CHECK_SASL = "check DRIFTLINE_KAFKA__SASL_MECHANISM, ..._SASL_USERNAME and ..._SASL_PASSWORD"
# TLS alerts a broker sends when it refuses the client's certificate: handshake failure (40), no, bad,
# unsupported, revoked, expired or unknown certificate (41-46), unknown CA (48), certificate required (116).
CERTIFICATE_ALERT = re.compile(r"SSL alert number (4[0-68]|116)\b")


def refusal_fix(err: KafkaError) -> str | None:
    """What to check when the broker refuses the client for good (TLS, authentication); None if waiting may help.

    librdkafka reports a certificate the client does not trust as ``_SSL``,
    bad credentials as ``_AUTHENTICATION``, but a broker that refuses the
    client's certificate (mutual TLS) as a transport failure carrying the
    TLS alert it received: that one is recognised by the alert.
    """
    code = err.code()
    if code == KafkaError._SSL:
        return CHECK_TLS
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return CHECK_SASL
    if code == KafkaError._TRANSPORT and CERTIFICATE_ALERT.search(err.str() or ""):
        return CHECK_CLIENT_CERT
    return None


# librdkafka's properties, as driftline's settings name them (a client refused at creation names the property).
SETTING_OF = {
    "ssl.key": "DRIFTLINE_KAFKA__SSL_KEY_FILE and DRIFTLINE_KAFKA__SSL_KEY_PASSWORD",
    "ssl.certificate": "DRIFTLINE_KAFKA__SSL_CERT_FILE",
    "ssl.ca": "DRIFTLINE_KAFKA__SSL_CA_FILE",
    "sasl": "the DRIFTLINE_KAFKA__SASL_* settings",
}


def client_refused(exc: KafkaException) -> ConfigError:
    """The one-line error for client settings librdkafka refuses when a client is made (a key it cannot read)."""
    err = exc.args[0] if exc.args else exc
    reason = err.str() if isinstance(err, KafkaError) else str(err)
    named = [setting for prop, setting in SETTING_OF.items() if prop in reason]
    return ConfigError(f"the Kafka client refuses its settings ({reason}); check "
                       f"{named[0] if named else 'the DRIFTLINE_KAFKA__* security settings'}")


def wait_for_broker(conf: Mapping[str, Any], wait_s: float, *, sleep: Any = time.sleep,
                    clock: Any = time.monotonic) -> Any:
    """Return the broker's metadata once it answers; retry with backoff for ``wait_s``, then one error.

    A worker started before its broker (a pod beside a Kafka that is still
    starting) waits instead of crash-looping. A TLS or authentication failure
    is not going to pass by waiting: it fails at once, and so do client
    settings librdkafka refuses outright (a key it cannot decrypt, a
    :class:`ConfigError`). Each error names librdkafka's own reason (a refused
    connection, a certificate that does not verify, invalid credentials),
    not only "transport failure", and the settings to check.
    """
    errors: list[KafkaError] = []
    admin_conf: dict[str, Any] = {**conf, "log_level": 0, "error_cb": errors.append}
    try:
        admin = AdminClient(admin_conf)
    except KafkaException as exc:
        raise client_refused(exc) from None
    deadline = clock() + wait_s
    delay = 0.25
    while True:
        errors.clear()
        try:
            return admin.list_topics(timeout=max(0.5, min(1.0, deadline - clock())))
        except KafkaException as exc:
            admin.poll(0)  # serves the error callbacks, which carry the detailed reason
            detailed = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
            cause = detailed[-1] if detailed else exc.args[0]
        fix = refusal_fix(cause) if isinstance(cause, KafkaError) else None
        left = deadline - clock()
        if left <= 0 or fix is not None:
            reason = cause.str() if isinstance(cause, KafkaError) else cause
            if fix is not None:
                raise BrokerError(f"cannot reach the broker at {conf.get('bootstrap.servers')} ({reason}); {fix}")
            raise BrokerError(f"cannot reach the broker at {conf.get('bootstrap.servers')} after {wait_s:g}s "
                              f"({reason}); check DRIFTLINE_BROKER, the DRIFTLINE_KAFKA__* security settings, "
                              "or raise DRIFTLINE_BROKER_WAIT_S")
        log.info("waiting for the broker at %s (%s)", conf.get("bootstrap.servers"),
                 cause.str() if isinstance(cause, KafkaError) else cause)
        sleep(min(delay, left))
        delay = min(delay * 2, 5.0)


#: what reading topic configs can raise (the broker away, a topic missing, a bad answer)
DESCRIBE_ERRORS = (KafkaException, ValueError, TypeError, RuntimeError)


def describe_topic_configs(conf: Mapping[str, Any], topics: Iterable[str], timeout_s: float = 10.0
                           ) -> Iterator[tuple[str, dict[str, str | None]]]:
    """(topic, its configs as the broker reports them), topic by topic; raises one of :data:`DESCRIBE_ERRORS`."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = AdminClient({**conf, "log_level": 0})
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in topics],
                                     request_timeout=timeout_s)
    for resource, future in futures.items():
        yield resource.name, {k: e.value for k, e in future.result(timeout=timeout_s).items()}


def topic_max_message_bytes(conf: Mapping[str, Any], topic: str, timeout_s: float = 10.0) -> int | None:
    """The topic's ``max.message.bytes`` as the broker reports it, or None where it reports none (Tansu)."""
    try:
        entries = dict(describe_topic_configs(conf, [topic], timeout_s))[topic]
    except DESCRIBE_ERRORS as exc:
        log.info("cannot read the configs of %s (%s); using the configured limits", topic, exc)
        return None
    value = entries.get("max.message.bytes")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# Why a config driftline creates a topic with matters: said when an existing topic has another value.
CONFIG_REASONS = {"cleanup.policy": "its last record per key is state still in use (a model's deployment, a drift "
                                    "state, a waiting label), which a delete policy removes after retention.ms"}


def config_mismatches(wanted: Mapping[str, Mapping[str, str]],
                      reported: Mapping[str, Mapping[str, str | None]]) -> list[str]:
    """One line per config of an existing topic that differs from what driftline creates the topic with.

    ``reported``: each topic's configs as the broker describes them; a config
    it does not report is not judged (the embedded broker reports only those
    a topic was created with, Kafka all of them).
    """
    out = []
    for topic, configs in wanted.items():
        for key, value in configs.items():
            actual = reported.get(topic, {}).get(key)
            if actual is None or actual == value:
                continue
            out.append(f"topic {topic} has {key}={actual}, not {value} as driftline creates it: "
                       f"{CONFIG_REASONS.get(key, 'driftline relies on it')}; set it with kafka-configs.sh "
                       f"--alter --entity-type topics --entity-name {topic} --add-config {key}={value}")
    return out


def check_topic_configs(conf: Mapping[str, Any], wanted: Mapping[str, Mapping[str, str]],
                        timeout_s: float = 10.0) -> list[str]:
    """Warn about existing topics whose configs differ from ``wanted``; the warnings.

    A topic made before driftline set its configs (a state topic from before
    it was compacted), or by the broker's auto-creation, keeps the broker's
    defaults: creating topics skips it, so this says what to change.
    """
    if not wanted:
        return []
    try:
        reported = dict(describe_topic_configs(conf, wanted, timeout_s))
    except DESCRIBE_ERRORS as exc:
        log.info("cannot read the configs of %s (%s); not checked", ", ".join(wanted), exc)
        return []
    problems = config_mismatches(wanted, reported)
    for problem in problems:
        log.warning("%s", problem)
    return problems


def ensure_topics(settings: Settings, timeout_s: float = 15.0) -> list[str]:
    """Every topic driftline uses, with its partition count and configs; returns those created.

    Topics that existed already are not changed: a config of theirs that
    differs from driftline's (a state topic that is not compacted) is logged
    as a warning saying how to set it.
    """
    conf, configs = settings.confluent(), settings.topic_configs()
    created = create_topics(conf, settings.topic_partitions(), timeout_s, configs=configs)
    # Only what driftline relies on is checked on existing topics: a retention an operator changed is theirs.
    relied = {t: {k: v for k, v in c.items() if k in CONFIG_REASONS} for t, c in configs.items() if t not in created}
    check_topic_configs(conf, {t: c for t, c in relied.items() if c}, timeout_s)
    return created


def topic_retention(conf: Mapping[str, Any], topics: list[str], timeout_s: float = 10.0) -> dict[str, str]:
    """Each topic's retention as the broker has it: ``compacted``, ``7d``, ``forever``; ``?`` where not reported."""
    out = dict.fromkeys(topics, "?")
    try:
        for topic, entries in describe_topic_configs(conf, topics, timeout_s):
            policy, ms = entries.get("cleanup.policy"), entries.get("retention.ms")
            if policy and "compact" in policy:
                out[topic] = "compacted"
            elif ms is not None:
                out[topic] = _days(int(ms))
    except DESCRIBE_ERRORS as exc:
        log.info("cannot read the topics' retention (%s)", exc)
    return out


def _days(ms: int) -> str:
    if ms < 0:
        return "forever"
    days = ms / 86_400_000
    return f"{days:g}d" if days >= 1 else f"{ms / 3_600_000:g}h"


def iter_topic(
    conf: Mapping[str, Any], topic: str, *, timeout_s: float = 30.0
) -> Iterator[Any]:
    """Every record of a topic from the beginning to its current end, in partition order."""
    consumer = Consumer(reader_config(conf))
    try:
        yield from read_to_end(consumer, topic, timeout_s=timeout_s)
    finally:
        consumer.close()


def read_to_end(consumer: Consumer, topic: str, *, timeout_s: float = 30.0, missing: str = "") -> Iterator[Any]:
    """Assign every partition of ``topic`` from offset 0 and yield its records up to each partition's EOF.

    The consumer needs ``enable.partition.eof``; it stays open, positioned at
    the end, so a caller may go on following the topic. ``missing`` is added
    to the error when the topic does not exist (what to do about it).
    """
    info = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if info is None or info.error is not None:
        raise BrokerError(f"topic {topic} does not exist{missing}")
    yield from read_partitions(consumer, topic, info.partitions, timeout_s=timeout_s)


def read_partitions(consumer: Consumer, topic: str, partitions: Iterable[int], *,
                    timeout_s: float = 30.0) -> Iterator[Any]:
    """Assign the given partitions of ``topic`` from offset 0 and yield their records up to each one's end.

    A partition ends at its EOF or, while producers keep appending to it, at
    the high watermark returned with its first fetched records (the
    embedded broker sends no EOF for a partition being written to, so a
    reader during traffic waited for an end that never came). The consumer
    needs ``enable.partition.eof``; the end is never the broker's "latest
    offset". Records a fetch brought beyond that end are yielded too.
    """
    partitions = list(partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    pending = set(partitions)
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise BrokerError(f"reading {topic} did not reach its end within {timeout_s:.0f}s")
        for msg in consumer.consume(10_000, timeout=0.5):
            err = msg.error()
            if err is None:
                yield msg
                p = msg.partition()
                if p in pending:
                    if p not in ends:
                        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                        ends[p] = high if high is not None and high >= 0 else -1
                    if 0 <= ends[p] <= (msg.offset() or 0) + 1:
                        pending.discard(p)
            elif err.code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())
            else:
                raise BrokerError(f"reading {topic}: {err}")


def iter_partitions(conf: Mapping[str, Any], topic: str, partitions: Iterable[int], *,
                    timeout_s: float = 30.0) -> Iterator[Any]:
    """Every record of some partitions of a topic, from the beginning to their current end, with its own consumer.

    Partitions the topic does not have are read as empty (with a warning):
    waiting for their end would only time out. A missing topic is a BrokerError.
    """
    consumer = Consumer(reader_config(conf))
    try:
        info = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if info is None or info.error is not None:
            raise BrokerError(f"topic {topic} does not exist; driftline topics create makes it")
        wanted = list(partitions)
        absent = [p for p in wanted if p not in info.partitions]
        if absent:
            log.warning("topic %s has no partition %s (it has %d): read as empty", topic, absent, len(info.partitions))
        yield from read_partitions(consumer, topic, [p for p in wanted if p in info.partitions], timeout_s=timeout_s)
    finally:
        consumer.close()


def latest_by_key(conf: Mapping[str, Any], topic: str, *, timeout_s: float = 30.0) -> dict[bytes, bytes]:
    """The last value of every key of a state topic, read from its start (compaction is not relied on)."""
    latest: dict[bytes, bytes] = {}
    for msg in iter_topic(conf, topic, timeout_s=timeout_s):
        key, value = msg.key(), msg.value()
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)  # a tombstone
        else:
            latest[key] = value
    return latest


def count_records(conf: Mapping[str, Any], topic: str, timeout_s: float = 30.0) -> int:
    return sum(1 for _ in iter_topic(conf, topic, timeout_s=timeout_s))
