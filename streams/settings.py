"""All configuration in one frozen object, from ``DRIFTLINE_*`` variables and an optional file.

Built once in the entry point and passed down. Precedence: explicit
arguments, then environment variables, then the TOML file named by
``DRIFTLINE_CONFIG``. Nested fields use ``__`` in variable names
(``DRIFTLINE_KAFKA__SECURITY_PROTOCOL=SASL_SSL``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import threading
import time
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from driftline.streams.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout; in an installed wheel, the driftline package
# The bundled example (driftline.examples): examples/ in a checkout, package data in a wheel. Both sit at
# REPO_ROOT / "examples", so the defaults below work from either.
EXAMPLE_DIR = REPO_ROOT / "examples"
EXAMPLE_MODELS = EXAMPLE_DIR / "models"
_NAME = r"^[A-Za-z0-9._-]+$"


GuardrailMetric = Literal["accuracy", "precision", "recall", "f1", "cost"]


def _default_guardrails() -> list[GuardrailMetric]:
    return ["recall", "f1"]


class KafkaSecurity(BaseModel):
    """Connection security, turned into both client stacks' settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    "SASL needs sasl_mechanism, sasl_username and sasl_password "
                    "(DRIFTLINE_KAFKA__SASL_MECHANISM, ..._SASL_USERNAME, ..._SASL_PASSWORD)"
                )
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("mTLS needs both ssl_cert_file and ssl_key_file")
        for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}={path} does not exist")
        return self

    def confluent(self) -> dict[str, str]:
        """librdkafka's dotted keys."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = self.sasl_password.get_secret_value() if self.sasl_password else ""
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = str(self.ssl_ca_file)
        if self.ssl_cert_file and self.ssl_key_file:
            conf["ssl.certificate.location"] = str(self.ssl_cert_file)
            conf["ssl.key.location"] = str(self.ssl_key_file)
        if self.ssl_key_password:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf


class SchemaRegistryConfig(BaseModel):
    """A Confluent-compatible Schema Registry; without ``url``, ids come from the ``.avsc`` files' hashes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = Field(None, description="https://host:8081 (Apicurio: .../apis/ccompat/v7); unset: no registry")
    username: str | None = Field(None, description="basic auth user (Confluent Cloud: the API key)")
    password: SecretStr | None = Field(None, description="basic auth secret")
    ca_file: Path | None = Field(None, description="CA bundle that signed the registry's TLS certificate")
    subject_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic", description="subject names: topic = {topic}-value (Confluent's default), record = the record's "
        "full name, topic_record = {topic}-{full name}",
    )
    auto_register: bool = Field(
        True, description="register driftline's output schemas at start; false: they must be registered already "
        "(driftline schemas register)",
    )
    wait_s: float = Field(30.0, ge=0, le=120, description="how long a batch waits for an unreachable registry")
    timeout_s: float = Field(5.0, gt=0, le=120, description="one registry request's time limit")
    unknown_ttl_s: float = Field(60.0, ge=0, description="an id the registry does not have is asked again after this")

    @model_validator(mode="after")
    def _complete(self) -> SchemaRegistryConfig:
        if self.url is not None and not re.match(r"^https?://[^\s]+$", self.url):
            shown = re.sub(r"//[^/@\s]*@", "//***@", self.url)[:200]  # never echo credentials in a URL
            raise ValueError(f"schema_registry.url={shown!r} must be an http:// or https:// URL")
        if (self.username is None) != (self.password is None):
            raise ValueError("schema_registry needs both username and password for basic auth, or neither")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"schema_registry.ca_file={self.ca_file} does not exist")
        return self

    def subject(self, topic: str, record: str) -> str:
        """The subject a record written to ``topic`` is registered under."""
        if self.subject_strategy == "record":
            return record
        if self.subject_strategy == "topic_record":
            return f"{topic}-{record}"
        return f"{topic}-value"


class Partitions(BaseModel):
    """Partition counts per topic role; outputs keyed by request id spread over theirs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int = Field(4, ge=1)
    predictions: int = Field(4, ge=1)
    deadletter: int = Field(1, ge=1)
    sketches: int = Field(1, ge=1)
    alerts: int = Field(1, ge=1)
    retrain: int = Field(1, ge=1)
    feedback: int = Field(4, ge=1)
    labeled: int = Field(4, ge=1)
    models: int = Field(1, ge=1)
    drift_state: int = Field(1, ge=1)
    scored: int = Field(4, ge=1)
    explanations: int = Field(4, ge=1)


class Retention(BaseModel):
    """Days each topic keeps its records (``retention.ms`` at creation; the state topics are compacted instead).

    A cost decision: README "Retention and cost" has bytes per record. Labels
    must stay as long as a prediction may wait for one (``feedback_ttl_s``),
    and ``{ns}.labeled`` as long as the trainer should find training data.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: float = Field(1.0, gt=0)
    predictions: float = Field(7.0, gt=0, description="and predictions.shadow")
    deadletter: float = Field(14.0, gt=0)
    sketches: float = Field(1.0, gt=0)
    alerts: float = Field(90.0, gt=0)
    retrain: float = Field(90.0, gt=0)
    feedback: float = Field(7.0, gt=0)
    labeled: float = Field(30.0, gt=0)
    scored: float = Field(3.0, gt=0, description="read once by the label join, whose state keeps what waits")
    explanations: float = Field(7.0, gt=0)

    def ms(self, role: str) -> int:
        return int(getattr(self, role) * 86_400_000)


class ModelBinding(BaseModel):
    """One served model: which version, read from which requests topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME)
    version: str = "latest"
    topic: str | None = Field(None, pattern=_NAME)


class Settings(BaseSettings):
    """driftline's whole configuration. See README "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLINE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    broker: str = Field("127.0.0.1:9092", min_length=3, description="bootstrap servers, host:port[,...]")
    kafka: KafkaSecurity = KafkaSecurity()
    namespace: str = Field("driftline", pattern=_NAME)
    partitions: Partitions = Partitions()
    retention_days: Retention = Retention()
    models: tuple[ModelBinding, ...] = (ModelBinding(name="fraud"),)
    model_dir: Path = EXAMPLE_MODELS
    schema_dirs: tuple[Path, ...] = ()
    schema_registry: SchemaRegistryConfig = SchemaRegistryConfig()
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    require_gpu: bool = False
    intra_op_threads: int = Field(1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    io_binding: bool | None = Field(None, description="ONNX Runtime IO binding; unset: on when CUDA is active")
    batch_max: int = Field(1000, ge=1, le=100_000)
    batch_wait_ms: int = Field(100, ge=0, le=10_000)
    batch_linger_ms: float = Field(
        3.0, ge=0, le=1_000, description="a batch smaller than batch_fill waits this long for more records")
    batch_fill: int = Field(100, ge=1, le=100_000)
    max_inflight_batches: int = Field(8, ge=1, le=1_000)
    codec: Literal["auto", "compiled", "numpy"] = Field(
        "auto", description="the Avro codec of the score path: the compiled one where built (auto), or numpy")
    producer_linger_ms: int = Field(5, ge=0, le=1_000)
    max_message_bytes: int = Field(256 * 1024, ge=64)
    deadletter_max_bytes: int = Field(
        1_000_000, ge=4096, le=100 * 1024 * 1024,
        description="a dead letter's whole record (key + value + headers) is cut and hashed to fit here",
    )
    deadletter_pii: Literal["redact", "keep"] = Field(
        "redact", description="dead letters of models with personal fields: re-encoded with those values replaced "
        "by a keyed HMAC (redact), or the original bytes (keep)",
    )
    pii_key: SecretStr | None = Field(None, description="the HMAC key personal values are pseudonymised with")
    pii_key_file: Path | None = Field(None, description="...or a file holding it (a mounted Secret)")
    broker_wait_s: float = Field(60.0, ge=0, le=3_600, description="how long to wait for the broker at start")
    feedback: bool = Field(False, description="join labels on {ns}.feedback to predictions (emits {ns}.scored)")
    feedback_ttl_s: float = Field(3600.0, gt=0, le=30 * 86_400, description="how long a prediction waits for its label")
    feedback_max_pending: int = Field(
        1_000_000, ge=100, description="the label join holds at most this many waiting entries"
    )
    feedback_max_pending_bytes: int = Field(
        256 * 1024 * 1024, ge=64 * 1024, description="...and at most this many bytes (estimated) of them"
    )
    quality_window_labels: int = Field(500, ge=10, description="labeled events per quality window")
    performance_drop_min: float = Field(0.05, gt=0, lt=1, description="accuracy drop that matters (absolute)")
    performance_drop_cooldown_s: float = Field(
        600.0, ge=0, description="a performance_drop of one model version and variant is reported at most this often"
    )
    concept_detector: Literal["adwin", "hddm_a", "hddm_w", "ddm", "eddm"] = "adwin"
    trainer_min_labels: int = Field(2000, ge=50, description="labels since the drift before training")
    trainer_wait_s: float = Field(3600.0, gt=0, description="how long the trainer waits for them")
    trainer_shadow_labels: int = Field(1000, ge=50, description="labeled shadow requests before deciding")
    trainer_shadow_wait_s: float = Field(6 * 3600.0, gt=0, description="how long a challenger may stay in shadow")
    promote_metric: Literal["log_loss", "accuracy"] = "log_loss"
    promote_margin: float = Field(0.0, ge=0, description="improvement the challenger needs, besides significance")
    promote_guardrails: list[GuardrailMetric] = Field(
        default_factory=_default_guardrails,
        description="metrics at the threshold a challenger must not lose, whatever it wins on (classifiers)",
    )
    promote_guardrail_tolerance: float = Field(
        0.02, ge=0, lt=1, description="how much a guardrail metric may fall (absolute; cost: relative)"
    )
    cost_false_positive: float = Field(1.0, ge=0, description="the 'cost' metric: what a false alarm costs")
    cost_false_negative: float = Field(1.0, ge=0, description="the 'cost' metric: what a missed positive costs")
    stall_s: float = Field(60.0, gt=0, le=86_400, description="/readyz: lag and no finished batch this long = stalled")
    fault_stall_after_batches: int | None = Field(
        None, ge=0, description="fault injection: the score agent hangs after N batches (readiness tests, drills)"
    )
    drift: bool = Field(True, description="fold batches into drift windows (models with a profile.json)")
    window_s: float = Field(60.0, ge=0.5, le=86_400, description="processing-time drift window length")
    window_events: int | None = Field(None, ge=10, description="count windows instead (tests, replays)")
    window_grace_s: float = Field(5.0, ge=0.0, le=3_600, description="wait for late worker sketches")
    drift_alpha: float = Field(0.01, gt=0.0, lt=0.5, description="false-alarm rate per column per window")
    drift_detector: Literal["adwin", "kswin", "page_hinkley", "bocpd", "none"] = "adwin"
    drift_k: int = Field(2, ge=1, description="alert when flagged in k of the last m windows")
    drift_m: int = Field(3, ge=1)
    drift_cooldown_windows: int = Field(5, ge=0)
    retrain_cooldown_windows: int = Field(30, ge=0)
    sketch_max_skew_s: float = Field(
        86_400.0, gt=0, description="sketches whose window starts further than this from now are rejected"
    )
    drift_max_pending_windows: int = Field(1_000, ge=1, description="open drift windows kept at most, per worker")
    drift_impact: bool = Field(
        True, description="rank a window's drifted features by their estimated effect on the model's score "
        "(the profile's joint rows scored through the version's model when a window raises data-drift alerts)"
    )
    # -- explanations (README "Explanations") --
    explain_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of requests explained (per-feature Shapley attributions on "
        "{ns}.explanations), picked by a hash of the request id; 0: off. Emits {ns}.scored, which it reads")
    explain_samples: int = Field(
        256, ge=2, le=100_000, description="coalitions evaluated per explained request (all of them, exact, "
        "when 2^features - 2 fit)")
    explain_background: int = Field(
        64, ge=1, le=256, description="reference rows each coalition is averaged over (of the profile's joint rows)")
    explain_max_rows: int = Field(
        65_536, ge=1_000, le=10_000_000, description="rows per ONNX call of the explain agent")
    expected_dead_letter_rate: float = Field(0.02, gt=0.0, lt=1.0)
    expected_duplicate_rate: float = Field(
        0.001, gt=0.0, lt=1.0, description="share of requests whose id repeats an earlier one (producer retries) "
        "that is no data-quality alert")
    duplicate_check_ids: int = Field(
        200_000, ge=0, le=10_000_000, description="request ids a worker remembers per model and window to count "
        "repeated ones (about 60 bytes each whatever their length, two windows kept); 0: no duplicate check")
    # bias audits (the manifest's segments): a block of its own
    bias_max_difference: float = Field(
        0.1, gt=0.0, lt=1.0, description="a segment's spread of positive-decision rates across its values beyond "
        "which, when also significant at drift_alpha, the window is flagged for bias")
    bias_max_values: int = Field(
        10, ge=2, le=50, description="segment values audited, exported as metric labels and shown per field: the "
        "most frequent ones, the rest pooled as (other)")
    group_id: str | None = Field(None, pattern=_NAME)
    fetch_wait_ms: int = Field(10, ge=1, le=5_000)
    session_timeout_s: float = Field(10.0, ge=1.0, le=300.0)
    assignment_strategy: Literal["range", "roundrobin", "cooperative-sticky"] = Field(
        "range", description="how the score group shares partitions; cooperative-sticky moves fewer of them on "
        "Apache Kafka, but the embedded broker can leave partitions unassigned with it after a member dies",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="exactly_once: a batch's outputs and its input offsets commit in one Kafka "
        "transaction (needs a broker with transactions: Apache Kafka, not the embedded broker)",
    )
    transactional_id: str | None = Field(
        None, pattern=_NAME, description="exactly_once: this worker's transactional id, stable across its restarts "
        "so a restart aborts what it left open at once; unset: {namespace}-score-{host}-{process index}",
    )
    transaction_ms: int = Field(100, ge=1, le=60_000, description="exactly_once: commit a transaction this often")
    transaction_timeout_s: float = Field(
        10.0, ge=1.0, le=900.0, description="exactly_once: the broker aborts a transaction left open this long "
        "(a crashed worker's outputs stay invisible to read_committed readers until then, or until it restarts)",
    )
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = Field(
        "127.0.0.1", description="address the web server listens on; the images and manifests set 0.0.0.0 (probes "
        "and Prometheus come from outside the pod) together with a web token",
    )
    web_token: SecretStr | None = Field(
        None, description="bearer token that the dashboard's data, /api/* and /metrics require (/healthz and "
        "/readyz stay open for probes); unset: no token asked for",
    )
    web_token_file: Path | None = Field(None, description="...or a file holding it (a mounted Kubernetes Secret)")
    web_open: bool = Field(
        False, description="allow listening beyond loopback without a token (a network you trust); else refused",
    )
    web_tls_cert_file: Path | None = Field(None, description="serve HTTPS with this certificate (PEM, with chain)")
    web_tls_key_file: Path | None = Field(None, description="...and this key (PEM)")
    data_dir: Path = Path(".driftline")
    control_key: SecretStr | None = Field(
        None, description="signs deployment records on {ns}.models (HMAC-SHA256); workers refuse unsigned or "
        "forged ones. Every writer (driftline model, the trainer) and worker needs the same key",
    )
    control_key_file: Path | None = Field(None, description="...or a file holding it (a mounted Secret)")
    model_verify_key_file: Path | None = Field(
        None, description="an Ed25519 public key (PEM): workers load only model versions signed with its private key",
    )
    model_sign_key_file: Path | None = Field(
        None, description="the private key (PEM) driftline model register and the trainer sign new versions with",
    )
    control_identity: str | None = Field(
        None, max_length=200, description="who a deployment change is recorded as (default: OS user@host)",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: each model may be served once")
        topics = [self.requests_topic(m) for m in self.models]
        if len(set(topics)) != len(topics):
            raise ValueError("models: two models read the same requests topic; give each its own topic")
        if self.drift_k > self.drift_m:
            raise ValueError("drift_k must not exceed drift_m")
        for secret in ("web_token", "control_key", "pii_key"):  # a secret, or a file holding it
            if getattr(self, secret) is not None and getattr(self, f"{secret}_file") is not None:
                raise ValueError(f"set {secret} or {secret}_file, not both")
        if (self.web_tls_cert_file is None) != (self.web_tls_key_file is None):
            raise ValueError("HTTPS needs both web_tls_cert_file and web_tls_key_file")
        for name in ("web_token_file", "control_key_file", "pii_key_file", "model_verify_key_file",
                     "model_sign_key_file", "web_tls_cert_file", "web_tls_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}={path} does not exist")
        if self.require_gpu and self.providers == "cpu":
            raise ValueError("require_gpu with providers=cpu can never start; use providers=auto or cuda")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("DRIFTLINE_CONFIG")
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    def web_token_value(self) -> str | None:
        """The web token, from the setting or its file (read now: a rotated Secret is read at the next start)."""
        return _secret("the web token", self.web_token, self.web_token_file)

    def pii_secret(self) -> bytes | None:
        """The key personal values are pseudonymised with, or None when none is set."""
        secret = _secret("the PII key", self.pii_key, self.pii_key_file)
        return None if secret is None else secret.encode()

    def control_secret(self) -> bytes | None:
        """The control key's bytes (from the setting or its file), or None when records are not signed."""
        secret = _secret("the control key", self.control_key, self.control_key_file)
        return None if secret is None else secret.encode()

    def model_verify_key(self) -> bytes | None:
        """The public key model versions must be signed for, or None (versions are checked by sha256 only)."""
        return Path(self.model_verify_key_file).read_bytes() if self.model_verify_key_file else None

    def actor(self) -> str:
        """Who this process records deployment changes as."""
        if self.control_identity:
            return self.control_identity
        import getpass
        import socket

        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container user without a passwd entry
            user = f"uid{os.getuid()}"
        return f"{user}@{socket.gethostname()}"

    # -- derived names -------------------------------------------------------------

    def topic(self, role: str) -> str:
        return f"{self.namespace}.{role}"

    def requests_topic(self, binding: ModelBinding) -> str:
        if binding.topic:
            return binding.topic
        first = self.models[0].name == binding.name
        return self.topic("requests") if first else self.topic(f"requests.{binding.name}")

    @property
    def score_group(self) -> str:
        return self.group_id or f"{self.namespace}-score"

    def topic_partitions(self) -> dict[str, int]:
        """Every topic driftline uses, with its partition count."""
        p = self.partitions
        out = {self.requests_topic(m): p.requests for m in self.models}
        out |= {
            self.topic("predictions"): p.predictions,
            self.topic("predictions.shadow"): p.predictions,
            self.topic("deadletter"): p.deadletter,
            self.topic("sketches"): p.sketches,
            self.topic("alerts"): p.alerts,
            self.topic("retrain"): p.retrain,
            self.topic("feedback"): p.feedback,
            self.topic("labeled"): p.labeled,
            self.topic("models"): p.models,
            self.topic("drift-state"): p.drift_state,
            self.topic("scored"): p.scored,
            self.topic("feedback-state"): p.scored,  # partition p holds the join state of scored/feedback p
            self.topic("explanations"): p.explanations,
        }
        return out

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """State topics (last record per key wins) are compacted on real Kafka; the others keep ``retention_days``."""
        out = {self.topic(role): {"cleanup.policy": "compact"} for role in ("models", "drift-state", "feedback-state")}
        r = self.retention_days
        for binding in self.models:
            out[self.requests_topic(binding)] = {"cleanup.policy": "delete", "retention.ms": str(r.ms("requests"))}
        for role, days in (("predictions", "predictions"), ("predictions.shadow", "predictions"),
                           ("deadletter", "deadletter"), ("sketches", "sketches"), ("alerts", "alerts"),
                           ("retrain", "retrain"), ("feedback", "feedback"), ("labeled", "labeled"),
                           ("scored", "scored"), ("explanations", "explanations")):
            out[self.topic(role)] = {"cleanup.policy": "delete", "retention.ms": str(r.ms(days))}
        return out

    # -- client configs ------------------------------------------------------------

    def confluent(self, **extra: Any) -> dict[str, Any]:
        """librdkafka's settings; its own log lines go to :data:`KAFKA_LOG` (repeats held back), not to stderr."""
        return {"bootstrap.servers": self.broker, "logger": KAFKA_LOG, **self.kafka.confluent(), **extra}

    def producer_config(self) -> dict[str, Any]:
        return self.confluent(
            **{
                "linger.ms": self.producer_linger_ms,
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": max(self.deadletter_max_bytes, self.max_message_bytes) + 64 * 1024,
                "queue.buffering.max.messages": 1_000_000,
                # The Java client's partitioner: a key lands on the same partition whoever produces it,
                # so {ns}.scored and a team's {ns}.feedback (keyed by request id) are co-partitioned.
                "partitioner": "murmur2_random",
            }
        )

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    def transactional_producer_config(self, transactional_id: str) -> dict[str, Any]:
        """The score path's producer in exactly-once: the idempotent producer plus a transactional id."""
        return {**self.producer_config(), "transactional.id": transactional_id,
                "transaction.timeout.ms": int(self.transaction_timeout_s * 1000)}

    def consumer_config(self, group: str | None = None) -> dict[str, Any]:
        timeout_ms = int(self.session_timeout_s * 1000)
        return self.confluent(
            **{
                "group.id": group or self.score_group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "session.timeout.ms": timeout_ms,
                "max.poll.interval.ms": max(timeout_ms, 30_000),
                "heartbeat.interval.ms": max(timeout_ms // 6, 500),
                "fetch.max.bytes": 64 * 1024 * 1024,
                "fetch.wait.max.ms": self.fetch_wait_ms,
                "partition.assignment.strategy": self.assignment_strategy,
            }
        )


def describe(exc: ValidationError) -> str:
    """One line naming the first bad setting and what to fix."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    var = "DRIFTLINE_" + "__".join(loc).upper() if loc else "DRIFTLINE_*"
    msg = err["msg"].removeprefix("Value error, ")
    given = err.get("input")
    secret = any(word in var.lower() for word in ("password", "token", "key", "secret"))
    shown = "" if isinstance(given, dict) or given is None or secret else f" (got {given!r})"
    return f"bad setting {var}: {msg}{shown}; fix the environment variable or the DRIFTLINE_CONFIG file"


def _secret(what: str, value: SecretStr | None, file: Path | None) -> str | None:
    """A secret from its setting or the file it names (surrounding whitespace dropped); at least 16 characters."""
    if value is not None:
        secret = value.get_secret_value()
    elif file is not None:
        secret = Path(file).read_text().strip()
    else:
        return None
    if len(secret) < 16:
        raise ConfigError(f"{what} must be at least 16 characters (openssl rand -hex 32 makes one)")
    return secret


# ``DRIFTLINE_*`` variables that are not settings: read by the commands themselves.
OTHER_VARIABLES = frozenset({
    "DRIFTLINE_CONFIG",  # the TOML settings file
    "DRIFTLINE_PROCESS_INDEX",  # set by `driftline worker --processes N` for each child
    "DRIFTLINE_KAFKA_HOME",  # where `make kafka` / the tests keep Apache Kafka's jars
    "DRIFTLINE_TANSU_BIN",  # the embedded broker's binary
    "DRIFTLINE_LOG_FORMAT",  # text or json: what --log-format sets, for child processes too
})


def setting_variables() -> list[str]:
    """Every ``DRIFTLINE_*`` variable a setting reads: one per field, and one per field of a nested group."""
    names = []
    for name, field in Settings.model_fields.items():
        names.append(f"DRIFTLINE_{name.upper()}")
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names += [f"DRIFTLINE_{name.upper()}__{sub.upper()}" for sub in group.model_fields]
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``DRIFTLINE_*`` variable that no setting reads (a typo is ignored otherwise)."""
    known = setting_variables()
    accepted = set(known) | OTHER_VARIABLES
    out = []
    for var in sorted(environ):
        upper = var.upper()
        if not upper.startswith("DRIFTLINE_") or upper in accepted:
            continue
        if upper.startswith(("DRIFTLINE_KAFKA__", "DRIFTLINE_PARTITIONS__")):
            continue  # a field the group does not have is an error already (extra inputs are not permitted)
        close = difflib.get_close_matches(upper.removeprefix("DRIFTLINE_"),
                                          [k.removeprefix("DRIFTLINE_") for k in known], n=1, cutoff=0.75)
        hint = f"; did you mean DRIFTLINE_{close[0]}?" if close else "; see README \"Configuration\" for the settings"
        out.append(f"{var} is not a driftline setting and is ignored{hint}")
    return out


_warned: set[str] = set()


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log :func:`unknown_variables` as warnings, each once per process; the new ones."""
    new = [w for w in unknown_variables(os.environ if environ is None else environ) if w not in _warned]
    for warning in new:
        _warned.add(warning)
        logging.getLogger(__name__).warning("%s", warning)
    return new


def expected_form(name: str, given: str | None) -> str:
    """What a setting whose variable must be JSON (a list, a group) looks like, with an example."""
    field = Settings.model_fields[name]
    var = f"DRIFTLINE_{name.upper()}"
    ann: Any = field.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        sub, subfield = next(iter(ann.model_fields.items()))
        sub_ann: Any = subfield.annotation
        example = json.dumps({sub: TypeAdapter(sub_ann).dump_python(subfield.default, mode="json")})
        return (f"a JSON object, e.g. {var}='{example}', or one variable per field such as "
                f"{var}__{sub.upper()}")
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    kind = "a JSON object" if origin is dict else "a JSON list"
    item = args[0] if args else None
    token = given.strip() if given else ""
    if origin in (list, tuple, set) and item in (str, Path) and token:
        example = json.dumps([part.strip() for part in token.split(",") if part.strip()])
    elif origin in (list, tuple) and isinstance(item, type) and issubclass(item, BaseModel) and \
            re.fullmatch(r"[A-Za-z0-9._-]+", token):
        example = json.dumps([{next(iter(item.model_fields)): token}])  # DRIFTLINE_MODELS=fraud: [{"name": "fraud"}]
    else:
        default = field.get_default(call_default_factory=True)
        dumped = TypeAdapter(ann).dump_python(default, mode="json", exclude_none=True)
        example = json.dumps(dumped)
    return f"{kind}, e.g. {var}='{example}'"


def check_config_file(environ: Mapping[str, str] | None = None) -> None:
    """``DRIFTLINE_CONFIG`` names a readable TOML file, or :class:`ConfigError` says what is wrong with it."""
    config = (os.environ if environ is None else environ).get("DRIFTLINE_CONFIG")
    if not config:
        return
    path = Path(config)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"DRIFTLINE_CONFIG={config}: the file {why}; give the path of a TOML settings file, "
                          "or unset DRIFTLINE_CONFIG")
    try:
        with path.open("rb") as f:
            tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"DRIFTLINE_CONFIG file {config} is not valid TOML ({exc}); fix the file: "
                          "one `name = value` per line, strings in quotes, groups under [kafka] or [partitions]"
                          ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DRIFTLINE_CONFIG file {config} cannot be read ({exc}); fix its permissions or "
                          "unset DRIFTLINE_CONFIG") from None


_PARSE_ERROR = re.compile(r'error parsing value for field "(\w+)"')


def describe_settings_error(exc: SettingsError, environ: Mapping[str, str] | None = None) -> str:
    """One line for a variable pydantic-settings cannot parse (one that must be JSON and is not)."""
    m = _PARSE_ERROR.search(str(exc))
    if m is None or m.group(1) not in Settings.model_fields:
        return f"bad setting: {exc}; fix the DRIFTLINE_* environment variables or the DRIFTLINE_CONFIG file"
    name = m.group(1)
    env = os.environ if environ is None else environ
    var = next((k for k in env if k.upper() == f"DRIFTLINE_{name.upper()}"), f"DRIFTLINE_{name.upper()}")
    given = env.get(var)
    shown = f" (got {given!r})" if given is not None and len(given) <= 200 else ""
    return (f"bad setting {var}: not valid JSON{shown}; it takes {expected_form(name, given)}; "
            "fix the environment variable")


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once; a bad value raises :class:`ConfigError` with one line.

    Also: ``DRIFTLINE_CONFIG`` must name a valid TOML file, and a
    ``DRIFTLINE_*`` variable that no setting reads is logged as a warning
    (with the closest setting's name), once per process.
    """
    check_config_file()
    warn_unknown_variables()
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    except SettingsError as exc:
        raise ConfigError(describe_settings_error(exc)) from None


# -- librdkafka's own log lines ------------------------------------------------------------------------------------

_NUMBERS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets a message through once per ``window_s``; the repeats in between are counted, not logged.

    A message's identity ignores numbers (ports, milliseconds, counts), so
    librdkafka's "Connect to ... failed (after 3ms ...)" every second while a
    broker is away is one line a minute, not sixty; the next one that passes
    says how many were held back. Only records at ``min_level`` or above from
    loggers named in ``names`` (and their children; all when None) are
    judged: the rest pass as they are.
    """

    def __init__(self, window_s: float = 60.0, *, names: tuple[str, ...] | None = None,
                 min_level: int = logging.NOTSET, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.names = names
        self.min_level = min_level
        self._clock = clock
        self._seen: dict[tuple[str, str], list[float]] = {}  # identity -> [when it last passed, repeats since]
        self._lock = threading.Lock()  # librdkafka's lines are served on whichever thread polls

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        if self.names is not None and not any(record.name == n or record.name.startswith(n + ".")
                                              for n in self.names):
            return True
        with self._lock:
            return self._pass(record)

    def _pass(self, record: logging.LogRecord) -> bool:
        key = (record.name, _NUMBERS.sub("#", record.getMessage()))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.getMessage()} (repeated {int(seen[1])} times in the last {now - seen[0]:.0f}s)"
            record.args = ()
        self._seen[key] = [now, 0]
        if len(self._seen) > 1000:  # forget what has not come back for a while
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
        return True


KAFKA_LOG = logging.getLogger("driftline.kafka.librdkafka")
"""librdkafka's own log lines (a broker refusing connections, ...) of clients made from :meth:`Settings.confluent`."""
KAFKA_LOG.addFilter(RepeatFilter())
