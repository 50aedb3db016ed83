"""Which drift matters, in the drift agent: rank a closed window's drifted features by their effect on the score.

The pure estimate is :mod:`driftline.detectors.impact`; this module gives it
the version's own model. It runs when a window closes with data-drift
alerts, at most once per window, off the score path: one ONNX call per
drifted feature on twice the profile's joint rows (512 rows by default),
on a CPU session of its own (one thread), opened on first use and kept for
the most recently used versions. Whatever goes wrong (no joint rows, a
version that does not load or score) ranks by PSI instead, and says so.
"""

from __future__ import annotations

import logging
import time

from driftline.detectors.impact import BY_PSI, FeatureImpact, drifted, rank_drift
from driftline.detectors.profile import ReferenceProfile
from driftline.inference.errors import ModelError
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry, is_plain_name
from driftline.schemas.profile import CategoricalFeature
from driftline.streams.core.drift import ClosedWindow
from driftline.streams.core.recent import RecentlyUsed

log = logging.getLogger(__name__)


class ImpactRanker:
    """Ranks drifted features with each version's model from the registry (CPU sessions, bounded cache)."""

    def __init__(self, registry: ModelRegistry, alpha: float, *, verify_key: bytes | None = None,
                 max_models: int = 8) -> None:
        self.registry = registry
        self.alpha = alpha
        self.verify_key = verify_key
        self._models = RecentlyUsed[tuple[str, str], OnnxModel | None](max_models)
        self.last_ms = 0.0  # how long the last ranking took (logged; measured in the tests and benchmark)

    def rank(self, window: ClosedWindow, profile: ReferenceProfile | None) -> dict[str, FeatureImpact]:
        """The window's drifted features by rank; empty when it raised no data-drift alert."""
        if profile is None or not any(d.result.kind == "data_drift" for d in window.alerts):
            return {}
        flagged = drifted(window.results, self.alpha)
        sketch = window.sketch
        model = self._model(sketch.model, sketch.version) if profile.rows is not None else None
        started = time.perf_counter()
        try:
            unseen_as = {} if model is None else {
                f.name: str(f.impute) for f in model.manifest.profile.features
                if isinstance(f, CategoricalFeature) and f.unseen == "impute"}
            ranked = rank_drift(profile, sketch, flagged, None if model is None else model.predict_columns,
                                unseen_as=unseen_as)
        except Exception as exc:  # noqa: BLE001 - ORT and numpy raise several unrelated types
            log.warning("%s v%s: the drift impact could not be estimated (%s: %s); drifted features ranked by PSI",
                        sketch.model, sketch.version, type(exc).__name__, str(exc)[:300])
            ranked = rank_drift(profile, sketch, flagged, None)
        self.last_ms = (time.perf_counter() - started) * 1000
        if ranked and next(iter(ranked.values())).method != BY_PSI:
            log.info("%s v%s: %d drifted features ranked by effect on the score in %.1f ms", sketch.model,
                     sketch.version, len(ranked), self.last_ms)
        return ranked

    def _model(self, name: str, version: str) -> OnnxModel | None:
        # a failure is not kept: a glitch (a file being written) must not rank by PSI until a restart
        return self._models.get((name, version), lambda: self._load(name, version), keep=lambda m: m is not None)

    def _load(self, name: str, version: str) -> OnnxModel | None:
        if not (is_plain_name(name) and is_plain_name(version)):
            return None
        try:
            model = OnnxModel(self.registry.path(name, version), providers="cpu", intra_op_threads=1,
                              verify_key=self.verify_key)
            model.load()
        except (ModelError, OSError, ValueError) as exc:  # a changed file, a bad key, a manifest that does not read
            log.warning("%s v%s does not load for the drift impact estimate (%s); drifted features are ranked "
                        "by PSI", name, version, exc)
            return None
        return model

