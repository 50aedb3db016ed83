"""Deployments in the worker: load the versions a control record names, and the alerts when that fails.

The control topic itself (read to the end at start, then followed) is
:mod:`driftline.streams.kafka.control`; the score path does not start before
it has been read to its end.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import replace

from driftline.inference.deployment import Deployment
from driftline.inference.errors import ModelError
from driftline.inference.model import CUDA, GraphOptimization, OnnxModel, ProviderChoice
from driftline.inference.registry import ModelRegistry
from driftline.streams.core.events import Alert, event_id, point_alert
from driftline.streams.core.poison import SkippedRecord
from driftline.streams.errors import ConfigError
from driftline.streams.settings import Settings

log = logging.getLogger(__name__)


def loader_from(settings: Settings) -> ModelLoader:
    return ModelLoader(ModelRegistry(settings.model_dir), providers=settings.providers,
                       intra_op_threads=settings.intra_op_threads, graph_optimization=settings.graph_optimization,
                       io_binding=settings.io_binding, require_gpu=settings.require_gpu,
                       verify_key=settings.model_verify_key())


class ModelLoader:
    """Opens model versions from the registry with the worker's ONNX Runtime settings."""

    def __init__(self, registry: ModelRegistry, *, providers: ProviderChoice, intra_op_threads: int,
                 graph_optimization: GraphOptimization = "all", io_binding: bool | None = None,
                 require_gpu: bool = False, verify_key: bytes | None = None) -> None:
        self.registry = registry
        self.verify_key = verify_key
        self.io_binding = io_binding
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.graph_optimization = graph_optimization
        self.require_gpu = require_gpu

    def load(self, name: str, version: str | None) -> OnnxModel:
        """Load and warm up one version; ModelError (or ConfigError for require_gpu) when it cannot serve."""
        model = OnnxModel(self.registry.path(name, version), providers=self.providers,
                          intra_op_threads=self.intra_op_threads, graph_optimization=self.graph_optimization,
                          io_binding=self.io_binding, verify_key=self.verify_key)
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
        version = deployment.champion
        try:
            for version in deployment.versions():
                have = loaded.get(version)
                models[version] = have if have is not None and have.ready else self.load(deployment.model, version)
        except (ModelError, ConfigError) as exc:
            for v, m in models.items():
                if loaded.get(v) is not m:
                    m.unload()
            raise VersionRefused(version, str(exc)) from exc
        return models


class VersionRefused(ModelError):
    """A deployment's version that cannot serve: ``version`` names it (a shadow's, not the champion's)."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(reason)
        self.version = version


def refused_version(exc: Exception, deployment: Deployment) -> str:
    """The version a refusal is about: the one that failed to load, else the deployment's champion."""
    return exc.version if isinstance(exc, VersionRefused) else deployment.champion


def load_failed_alert(model: str, version: str, reason: str, now_ms: int) -> Alert:
    """The alert (kind model_load_failed) of a refused version."""
    return point_alert(model, version, "model_load_failed", "model_load", 1.0, 0.0,
                       f"v{version} refused, the previous deployment keeps serving: {reason}", now_ms)


def bad_control_alert(skipped: SkippedRecord, served: Collection[str], now_ms: int) -> Alert:
    """The critical alert (kind bad_control_record) of a control record that was skipped.

    ``model`` is the record's key when it names a served model, else
    ``unknown`` (the key is untrusted: the message quotes it). The id hashes
    the record's position, so every worker, and every restart that reads the
    record again, raises the same alert id and consumers can dedupe.
    """
    key = (skipped.key or b"").decode(errors="replace")
    model = key if key in served else "unknown"
    alert = point_alert(
        model, "", "bad_control_record", "control_record", 1.0, 0.0,
        f"the control record at {skipped.position} (key {key[:80]!r}) was skipped ({skipped.skip.reason}): "
        f"{skipped.skip.detail}; what served before keeps serving. Write a valid deployment with "
        "driftline model promote/canary/shadow/ab/rollback", now_ms)
    return replace(alert, id=event_id(skipped.position, "bad_control_record"))
