"""All configuration in one frozen object, from ``DRIFTLINE_*`` variables and an optional file.

Built once in the entry point and passed down. Precedence: explicit
arguments, then environment variables, then the TOML file named by
``DRIFTLINE_CONFIG``. Nested fields use ``__`` in variable names
(``DRIFTLINE_KAFKA__SECURITY_PROTOCOL=SASL_SSL``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
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
    models: tuple[ModelBinding, ...] = (ModelBinding(name="fraud"),)
    model_dir: Path = EXAMPLE_MODELS
    schema_dirs: tuple[Path, ...] = ()
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    require_gpu: bool = False
    intra_op_threads: int = Field(1, ge=0)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    io_binding: bool | None = Field(None, description="ONNX Runtime IO binding; unset: on when CUDA is active")
    batch_max: int = Field(1000, ge=1, le=100_000)
    batch_wait_ms: int = Field(100, ge=0, le=10_000)
    max_inflight_batches: int = Field(8, ge=1, le=1_000)
    producer_linger_ms: int = Field(5, ge=0, le=1_000)
    max_message_bytes: int = Field(256 * 1024, ge=64)
    deadletter_max_bytes: int = Field(
        1_000_000, ge=4096, le=100 * 1024 * 1024,
        description="a dead letter's whole record (key + value + headers) is cut and hashed to fit here",
    )
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
    drift_detector: Literal["adwin", "kswin", "page_hinkley", "none"] = "adwin"
    drift_k: int = Field(2, ge=1, description="alert when flagged in k of the last m windows")
    drift_m: int = Field(3, ge=1)
    drift_cooldown_windows: int = Field(5, ge=0)
    retrain_cooldown_windows: int = Field(30, ge=0)
    sketch_max_skew_s: float = Field(
        86_400.0, gt=0, description="sketches whose window starts further than this from now are rejected"
    )
    drift_max_pending_windows: int = Field(1_000, ge=1, description="open drift windows kept at most, per worker")
    expected_dead_letter_rate: float = Field(0.02, gt=0.0, lt=1.0)
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
    data_dir: Path = Path(".driftline")

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
        }
        return out

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """State topics (last record per key wins) are compacted on real Kafka."""
        return {self.topic(role): {"cleanup.policy": "compact"} for role in ("models", "drift-state", "feedback-state")}

    # -- client configs ------------------------------------------------------------

    def confluent(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.broker, **self.kafka.confluent(), **extra}

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
    shown = "" if isinstance(given, dict) or given is None or "password" in var.lower() else f" (got {given!r})"
    return f"bad setting {var}: {msg}{shown}; fix the environment variable or the DRIFTLINE_CONFIG file"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once; a bad value raises :class:`ConfigError` with one line."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
