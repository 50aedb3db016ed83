"""Deployments in the worker: load the versions a control record names, follow the control topic.

The control topic ``{ns}.models`` holds one JSON :class:`Deployment` per
model (last record per key wins). Every worker reads all of it, not a share:
it uses its own consumer with no group and no commits, reads the topic to
its end at start (the score path does not start before), then follows it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer

from inference.deployment import Deployment
from inference.errors import ModelError
from inference.model import CUDA, GraphOptimization, OnnxModel, ProviderChoice
from inference.registry import ModelRegistry
from streams.alerts import point_alert
from streams.errors import ConfigError
from streams.kafka import read_to_end
from streams.settings import Settings

log = logging.getLogger(__name__)


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
        """Every version ``deployment`` needs, reusing ``loaded`` ones; nothing is kept if one fails."""
        models: dict[str, OnnxModel] = {}
        try:
            for version in deployment.versions():
                have = loaded.get(version)
                models[version] = have if have is not None and have.ready else self.load(deployment.model, version)
        except (ModelError, ConfigError):
            for version, m in models.items():
                if loaded.get(version) is not m:
                    m.unload()
            raise
        return models


def parse_deployment(key: bytes | None, value: bytes | None) -> Deployment | None:
    """A control record, or None (logged) when it is not one."""
    if key is None or value is None:
        return None
    try:
        dep = Deployment.from_dict(json.loads(value))
    except (ValueError, ModelError) as exc:
        log.warning("ignored a control record that is not a deployment: %s", exc)
        return None
    if dep.model != key.decode(errors="replace"):
        log.warning("ignored a control record keyed %r for model %s", key, dep.model)
        return None
    return dep


class ControlFollower:
    """Reads ``{ns}.models`` from the beginning with its own consumer (no group, no commits)."""

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer({
            **conf, "group.id": f"driftline-control-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
        })

    def read_to_end(self, timeout_s: float = 30.0) -> dict[str, Deployment]:
        """Read the topic from offset 0 to its end (the consumer stays there to follow it): the latest per model."""
        latest: dict[str, Deployment] = {}
        for msg in read_to_end(self._consumer, self.topic, timeout_s=timeout_s,
                               missing=" (the control topic); run driftline topics create"):
            if (dep := parse_deployment(msg.key(), msg.value())) is not None:
                latest[dep.model] = dep
        return latest

    def poll(self, timeout_s: float) -> list[Deployment]:
        """New deployments since the last call (after :meth:`read_to_end`)."""
        out = []
        for msg in self._consumer.consume(100, timeout=timeout_s):
            if msg.error() is None and (dep := parse_deployment(msg.key(), msg.value())) is not None:
                out.append(dep)
        return out

    def close(self) -> None:
        self._consumer.close()


def load_failed_alert(model: str, version: str, reason: str, now_ms: int) -> dict[str, Any]:
    """The ``driftline.Alert`` record (kind model_load_failed) of a refused version."""
    return point_alert(model, version, "model_load_failed", "model_load", 1.0, 0.0,
                       f"v{version} refused, the previous deployment keeps serving: {reason}", now_ms)
