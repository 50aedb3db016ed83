"""Deployments in the worker: load the versions a control record names, follow the control topic.

The control topic ``{ns}.models`` holds one JSON :class:`Deployment` per
model (last record per key wins). Every worker reads all of it, not a share:
it uses its own consumer with no group and no commits, reads the topic to
its end at start (the score path does not start before), then follows it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from confluent_kafka import Consumer

from inference.deployment import Deployment
from inference.errors import ModelError
from inference.model import CUDA, GraphOptimization, OnnxModel, ProviderChoice
from inference.registry import ModelRegistry
from streams.alerts import point_alert
from streams.errors import ConfigError
from streams.kafka import read_to_end
from streams.poison import DETAIL_CHARS, BadRecord, Skip, SkipLog, SkippedRecord, load_json
from streams.settings import Settings

log = logging.getLogger(__name__)
KEEP_SKIPPED = 20  # skipped control records kept for alerts between two drains (all are counted)


def loader_from(settings: Settings) -> ModelLoader:
    return ModelLoader(ModelRegistry(settings.model_dir), providers=settings.providers,
                       intra_op_threads=settings.intra_op_threads, graph_optimization=settings.graph_optimization,
                       io_binding=settings.io_binding, require_gpu=settings.require_gpu)


class ModelLoader:
    """Opens model versions from the registry with the worker's ONNX Runtime settings."""

    def __init__(self, registry: ModelRegistry, *, providers: ProviderChoice, intra_op_threads: int,
                 graph_optimization: GraphOptimization = "all", io_binding: bool | None = None,
                 require_gpu: bool = False) -> None:
        self.registry = registry
        self.io_binding = io_binding
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.graph_optimization = graph_optimization
        self.require_gpu = require_gpu

    def load(self, name: str, version: str | None) -> OnnxModel:
        """Load and warm up one version; ModelError (or ConfigError for require_gpu) when it cannot serve."""
        model = OnnxModel(self.registry.path(name, version), providers=self.providers,
                          intra_op_threads=self.intra_op_threads, graph_optimization=self.graph_optimization,
                          io_binding=self.io_binding)
        model.load()
        if self.require_gpu and model.active_provider != CUDA:
            model.unload()
            raise ConfigError(
                f"require_gpu is set but model {model.name} v{model.version} runs on {model.active_provider}; "
                "install driftline[gpu] on a machine with CUDA, or unset DRIFTLINE_REQUIRE_GPU"
            )
        return model

    def prepare(self, deployment: Deployment, loaded: Mapping[str, OnnxModel]) -> dict[str, OnnxModel]:
        """Every version ``deployment`` needs, reusing ``loaded`` ones; nothing is kept if one fails.

        Any refusal is a ModelError, require_gpu's included: a deployment
        comes from the control topic, and a worker refuses it (an alert, the
        previous deployment keeps serving) rather than stopping, at start too.
        """
        models: dict[str, OnnxModel] = {}
        try:
            for version in deployment.versions():
                have = loaded.get(version)
                models[version] = have if have is not None and have.ready else self.load(deployment.model, version)
        except (ModelError, ConfigError) as exc:
            for version, m in models.items():
                if loaded.get(version) is not m:
                    m.unload()
            if isinstance(exc, ConfigError):
                raise ModelError(str(exc)) from exc
            raise
        return models


def parse_deployment(key: bytes | None, value: bytes | None) -> Deployment | Skip:
    """A control record as a deployment, or why it is not one; never raises, whatever the bytes.

    The key must be the model's name: the topic is compacted by key, so a
    record keyed otherwise would not replace the model's last deployment.
    """
    if key is None:
        return Skip("no_key", "a control record must be keyed by its model's name")
    try:
        dep = Deployment.from_dict(load_json(value))
    except BadRecord as exc:
        return exc.skip()
    except ModelError as exc:
        return Skip("invalid_deployment", str(exc)[:DETAIL_CHARS])
    if dep.model != key.decode(errors="replace"):
        return Skip("key_mismatch", f"a deployment of model {dep.model!r} keyed {key[:80]!r}; "
                                    "the key must be the model's name")
    return dep


class ControlFollower:
    """Reads ``{ns}.models`` from the beginning with its own consumer (no group, no commits).

    Records that are not deployments are skipped (logged with their
    position) and kept in :attr:`skips`, whose :meth:`SkipLog.drain` gives
    the worker what to count and alert about, at start and while following.
    """

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        self.skips = SkipLog(log, keep=KEEP_SKIPPED)
        self._consumer = Consumer({
            **conf, "group.id": f"driftline-control-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        })

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
        got = parse_deployment(msg.key(), msg.value())
        if isinstance(got, Skip):
            self.skips.skip(self.topic, msg.partition(), msg.offset(), msg.key(), got)
            return None
        return got

    def close(self) -> None:
        self._consumer.close()


def load_failed_alert(model: str, version: str, reason: str, now_ms: int) -> dict[str, Any]:
    """The ``driftline.Alert`` record (kind model_load_failed) of a refused version."""
    return point_alert(model, version, "model_load_failed", "model_load", 1.0, 0.0,
                       f"v{version} refused, the previous deployment keeps serving: {reason}", now_ms)


def bad_control_alert(skipped: SkippedRecord, served: Collection[str], now_ms: int) -> dict[str, Any]:
    """The critical ``driftline.Alert`` (kind bad_control_record) of a control record that was skipped.

    ``model`` is the record's key when it names a served model, else
    ``unknown`` (the key is untrusted: the message quotes it). The id hashes
    the record's position, so every worker, and every restart that reads the
    record again, raises the same alert id and consumers can dedupe.
    """
    key = (skipped.key or b"").decode(errors="replace")
    model = key if key in served else "unknown"
    rec = point_alert(
        model, "", "bad_control_record", "control_record", 1.0, 0.0,
        f"the control record at {skipped.position} (key {key[:80]!r}) was skipped ({skipped.skip.reason}): "
        f"{skipped.skip.detail}; what served before keeps serving. Write a valid deployment with "
        "driftline model promote/canary/shadow/ab/rollback", now_ms)
    rec["id"] = hashlib.sha256(f"{skipped.position}|bad_control_record".encode()).hexdigest()[:32]
    return rec
