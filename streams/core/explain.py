"""The explain agent's logic: scored records in, explanation records out, off the score path.

It reads ``{ns}.scored`` in a consumer group of its own, keeps the share
``explain_fraction`` of requests picked by a hash of their ids (so every
worker picks the same ones, and a replay picks them again), and explains
them with :class:`~driftline.detectors.explain.ShapleyExplainer` through
the version's own model, on a CPU session of its own (one thread), against
the version's reference rows. The row it explains is the one the model saw
(the scored record's feature row, its imputed values filled in again),
in the model's matrix; a sealed row is opened with the PII key, or
skipped without one. Per version it also keeps global importance windows
(:mod:`driftline.detectors.importance`) by the requests' event time. An
explanation carries numbers (attributions, base, output) and the feature
names, never a feature value, so it shows nothing of a personal field.

Nothing here raises on bad input: a record that does not decode, a
version that does not load, an estimate that fails are skipped with a
reason, counted and logged, and the next batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.detectors.explain import Link, ShapleyExplainer, picked
from driftline.detectors.importance import ImportanceWindow, importance_shift, rank_correlation
from driftline.detectors.profile import ReferenceProfile
from driftline.inference.deployment import SHADOW
from driftline.inference.errors import ModelError
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry, is_plain_name
from driftline.schemas.catalog import SchemaCatalog, WireSchema
from driftline.schemas.codec import decode, encode
from driftline.schemas.profile import CategoricalFeature, InputProfile, NumericFeature
from driftline.streams.core.pipeline import OutRecord
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.recent import RecentlyUsed
from driftline.streams.core.sealing import Opener, SealError

log = logging.getLogger(__name__)

#: reasons a picked request is not explained (the ``reason`` label of the skipped counter)
MALFORMED = "malformed"  # the scored record does not decode, or its row is not the manifest's width
NO_MODEL = "no_model"  # the version is not in this worker's registry, or does not load
NO_BACKGROUND = "no_background"  # the version has no reference profile with joint rows
SEALED_NO_KEY = "sealed_no_key"  # the row is sealed and this worker has no PII key
SEAL_ERROR = "seal_error"  # the sealed row does not open with this key
FAILED = "failed"  # the estimate raised (the model gave non-finite scores, ...)
RETRY_S = 60.0  # a version that did not load is tried again after this long
MAX_FAILED = 1_000  # failures remembered at most (names come from a topic anyone may write to)
UNSEEN = "\x00unseen"  # a category the row had no column for: encodes back to no column, as it was scored


@dataclass(frozen=True, slots=True)
class ExplainConfig:
    """The explain agent's settings (``explain_*``)."""

    fraction: float
    samples: int = 256
    background: int = 64
    max_rows: int = 65_536
    window_ms: int = 60_000  # global importance windows, by the requests' event time (drift's window_s)


@dataclass(frozen=True, slots=True)
class ClosedImportance:
    """A closed window's global importance: mean |attribution| per feature, and its shift from the reference."""

    model: str
    version: str
    start_ms: int
    n: int  # requests explained in it (by this worker)
    features: tuple[str, ...]
    mean_abs: tuple[float, ...]
    reference: tuple[float, ...] | None  # the background's own mean |attribution| (None: it could not be computed)
    shift: float | None  # total variation distance of the shares (detectors.importance)
    rank_correlation: float | None


@dataclass(slots=True)
class ExplainStats:
    """What one batch did, for metrics: counts by model, skips by reason, the estimate's cost."""

    explained: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, reason)
    calls: int = 0  # model calls
    cpu_s: float = 0.0  # this thread's CPU time in the estimates
    wall_s: float = 0.0
    closed: list[ClosedImportance] = field(default_factory=list)  # importance windows this batch closed


@dataclass(frozen=True, slots=True)
class _Picked:
    request_id: str
    model: str
    version: str
    variant: str
    score: float
    event_time: int
    features: bytes
    sealed: bool


class _Version:
    """One model version ready to explain: its CPU session, the manifest's features, its explainer.

    The explainer works in the model's matrix (as ``{ns}.scored`` carries the
    rows): a categorical feature's one-hot columns are one feature. A model
    with named inputs scores the matrix decoded back into its columns.
    """

    def __init__(self, model: OnnxModel, profile: ReferenceProfile, config: ExplainConfig) -> None:
        self.model = model
        self.inputs: InputProfile = model.manifest.profile
        self.names = tuple(f.name for f in self.inputs.features)
        rows = profile.rows
        if rows is None or rows.n == 0 or any(n not in rows.columns for n in self.names):
            raise LookupError("no joint rows")
        background = self.inputs.encode({n: np.asarray(rows.columns[n])[: config.background] for n in self.names})
        bounds = np.cumsum([0, *(f.width for f in self.inputs.features)])
        groups = [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.impute = [(int(at), f.impute) for at, f in zip(bounds[:-1], self.inputs.features, strict=True)
                       if isinstance(f, NumericFeature)]
        how: Link = "identity" if model.manifest.task == "regression" else "logit"
        score = model.predict if not model.manifest.inputs else self._named
        self.explainer = ShapleyExplainer(background, score, groups=groups, link_fn=how, samples=config.samples,
                                          max_rows=config.max_rows)
        self.reference: np.ndarray | None = None
        try:  # the background explained against itself: what the model leans on in reference data (once)
            self.reference = np.abs(self.explainer.explain(background).phi).mean(axis=0)
        except Exception as exc:  # noqa: BLE001 - ORT and numpy raise several unrelated types
            log.warning("%s v%s: no reference importance (%s: %s); windows are reported without a shift",
                        model.name, model.version, type(exc).__name__, str(exc)[:300])
        self.window: tuple[int, ImportanceWindow] | None = None  # (start, sums) of the open window

    def fold(self, model: str, version: str, phi: np.ndarray, event_ms: np.ndarray, window_ms: int,
             closed: list[ClosedImportance]) -> None:
        """Add a batch's attributions to the importance windows of their event times; close the windows passed.

        A request older than the open window (late) is counted in the open one.
        """
        starts = (event_ms // window_ms) * window_ms
        for start in np.unique(starts).tolist():
            if self.window is None or start > self.window[0]:
                if self.window is not None:
                    closed.append(self.report(model, version))
                self.window = (int(start), ImportanceWindow.empty(self.names))
            self.window[1].add(phi[starts == start] if start >= self.window[0] else phi[starts <= start])

    def report(self, model: str, version: str) -> ClosedImportance:
        assert self.window is not None  # noqa: S101 - called with an open window
        start, w = self.window
        mean = w.mean_abs
        ref = self.reference
        return ClosedImportance(model, version, start, w.n, self.names, tuple(mean.tolist()),
                                None if ref is None else tuple(ref.tolist()),
                                None if ref is None else importance_shift(ref, mean),
                                None if ref is None else rank_correlation(ref, mean))

    def model_rows(self, raw: np.ndarray) -> np.ndarray:
        """Scored rows (NaN where a value was imputed) as the model saw them: the impute values back in."""
        out = np.array(raw, dtype=np.float32, copy=True)
        for at, value in self.impute:
            col = out[:, at]
            col[np.isnan(col)] = value
        return out

    def _named(self, matrix: np.ndarray) -> np.ndarray:
        return self.model.predict_columns(decode_rows(self.inputs, matrix))


def decode_rows(profile: InputProfile, matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Feature columns of rows of the model's matrix (:meth:`InputProfile.encode`'s inverse; NaN stays missing).

    >>> from driftline.schemas.profile import NumericFeature
    >>> p = InputProfile((NumericFeature("x"), CategoricalFeature("c", ("a", "b"))))
    >>> cols = decode_rows(p, np.array([[1.0, 0.0, 1.0], [np.nan, 1.0, 0.0]], dtype=np.float32))
    >>> cols["x"].tolist(), cols["c"].tolist()
    ([1.0, nan], ['b', 'a'])
    """
    out: dict[str, np.ndarray] = {}
    at = 0
    n = len(matrix)
    for f in profile.features:
        block = matrix[:, at:at + f.width]
        if not isinstance(f, CategoricalFeature):
            out[f.name] = block[:, 0].astype(np.float64)
        else:
            cats = np.array([*f.categories, UNSEEN], dtype=object)
            if f.encoding == "onehot":
                hot = block > 0.5
                idx = np.where(hot.any(axis=1), hot.argmax(axis=1), len(f.categories)) if n else np.zeros(0, int)
            else:
                raw = np.nan_to_num(block[:, 0], nan=-1.0).astype(np.int64)
                idx = np.where((raw >= 0) & (raw < len(f.categories)), raw, len(f.categories))
            out[f.name] = cats[idx]
        at += f.width
    return out


class ExplainCore:
    """Turns batches of ``{ns}.scored`` values into ``{ns}.explanations`` records (see the module)."""

    def __init__(self, registry: ModelRegistry, catalog: SchemaCatalog, topic: str, config: ExplainConfig, *,
                 opener: Opener | None = None, verify_key: bytes | None = None, max_models: int = 8) -> None:
        self.registry = registry
        self.catalog = catalog
        self.topic = topic
        self.config = config
        self.opener = opener
        self.verify_key = verify_key
        self.schema: WireSchema = catalog.latest("driftline.Explanation")
        self._versions = RecentlyUsed[tuple[str, str], "_Version | str"](max_models)
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (model, version): (when, why)
        self._now_ms = 0

    def batch(self, values: Sequence[bytes | None], now_ms: int | None = None
              ) -> tuple[list[OutRecord], ExplainStats]:
        """The explanations of a batch's picked records, and what it cost; never raises on a record.

        ``now_ms`` (default: the clock) bounds the event times the importance
        windows take: a request stamped in the far future would otherwise open
        a window that nothing closes.
        """
        stats = ExplainStats()
        self._now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        records: list[_Picked] = []
        for value in values:
            try:
                _, rec = decode(self.catalog, value, fast=True)
                if rec.get("variant") == SHADOW:
                    continue  # the served answer is what a request's explanation explains
                records.append(_Picked(str(rec["request_id"]), str(rec["model"]), str(rec["model_version"]),
                                       str(rec["variant"]), float(rec["score"]), int(rec["event_time"]),
                                       bytes(rec["features"]), bool(rec.get("sealed", False))))
            except Exception:  # noqa: BLE001 - a record from anyone: fastavro and the catalog raise many types
                stats.skipped["?", MALFORMED] += 1
        keep = picked([r.request_id for r in records], self.config.fraction)
        groups: dict[tuple[str, str], list[_Picked]] = {}
        for r, k in zip(records, keep.tolist(), strict=True):
            if k:
                groups.setdefault((r.model, r.version), []).append(r)
        out: list[OutRecord] = []
        for (model, version), group in groups.items():
            out.extend(self._explain(model, version, group, stats))
        return out, stats

    def _explain(self, model: str, version: str, group: list[_Picked], stats: ExplainStats) -> list[OutRecord]:
        v = self._version(model, version)
        if isinstance(v, str):
            stats.skipped[model, v] += len(group)
            return []
        rows, kept = self._rows(v, group, stats)
        if not kept:
            return []
        return self._estimate(model, version, v, rows, kept, stats)

    def _estimate(self, model: str, version: str, v: _Version, rows: list[np.ndarray], kept: list[_Picked],
                  stats: ExplainStats) -> list[OutRecord]:
        """Explain ``rows``; when the estimate fails, one row at a time, so one odd row costs only itself."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            a = v.explainer.explain(v.model_rows(np.stack(rows)))
        except Exception as exc:  # noqa: BLE001 - ORT and numpy raise several unrelated types
            if len(kept) > 1:
                return [o for row, r in zip(rows, kept, strict=True)
                        for o in self._estimate(model, version, v, [row], [r], stats)]
            log.warning("%s v%s: request %s not explained (%s: %s)", model, version, kept[0].request_id[:80],
                        type(exc).__name__, str(exc)[:300])
            stats.skipped[model, FAILED] += 1
            return []
        finally:
            stats.cpu_s += time.thread_time() - cpu
            stats.wall_s += time.perf_counter() - wall
        stats.calls += a.calls
        finite = np.isfinite(a.phi).all(axis=1) & np.isfinite(a.value) & bool(np.isfinite(a.base))
        if not finite.all():  # a row the model scores as inf or NaN has no attributions to give
            stats.skipped[model, FAILED] += int((~finite).sum())
            log.warning("%s v%s: %d requests not explained (the model's value is not finite)", model, version,
                        int((~finite).sum()))
        good = np.flatnonzero(finite).tolist()
        kept = [kept[i] for i in good]
        if not kept:
            return []
        phi, value = a.phi[good], a.value[good]
        stats.explained[model] += len(kept)
        event_ms = np.minimum(np.array([r.event_time for r in kept], dtype=np.int64),
                              self._now_ms + self.config.window_ms)
        v.fold(model, version, phi, event_ms, self.config.window_ms, stats.closed)
        names = list(v.names)
        return [OutRecord(self.topic, r.request_id.encode(), encode(self.schema, {
            "request_id": r.request_id, "model": model, "model_version": version, "variant": r.variant,
            "score": r.score, "link": v.explainer.link, "base": a.base, "value": float(value[i]),
            "features": names, "attributions": phi[i].tolist(), "method": a.method, "samples": a.samples,
            "background": v.explainer.n, "event_time": r.event_time}, fast=True))
            for i, r in enumerate(kept)]

    def _rows(self, v: _Version, group: list[_Picked],
              stats: ExplainStats) -> tuple[list[np.ndarray], list[_Picked]]:
        width = v.inputs.width
        rows, kept = [], []
        for r in group:
            data = r.features
            if r.sealed:
                if self.opener is None:
                    stats.skipped[r.model, SEALED_NO_KEY] += 1
                    continue
                try:
                    data = self.opener.open(r.model, r.request_id, data)
                except SealError:
                    stats.skipped[r.model, SEAL_ERROR] += 1
                    continue
            if len(data) != 4 * width:
                stats.skipped[r.model, MALFORMED] += 1
                continue
            rows.append(np.frombuffer(data, dtype="<f4"))
            kept.append(r)
        return rows, kept

    def version(self, model: str, version: str) -> _Version | str:
        """The version ready to explain, or why not (a skip reason)."""
        return self._version(model, version)

    def _version(self, model: str, version: str) -> _Version | str:
        # a failure is kept RETRY_S only: a version registered a moment later must not stay unexplained until a
        # restart, nor a missing one be loaded again (and logged) on every poll
        failed = self._failed.get((model, version))
        if failed is not None and time.monotonic() - failed[0] < RETRY_S:
            return failed[1]
        got = self._versions.get((model, version), lambda: self._load(model, version),
                                 keep=lambda v: not isinstance(v, str))
        if isinstance(got, str):
            if len(self._failed) >= MAX_FAILED:
                self._failed.clear()
            self._failed[model, version] = (time.monotonic(), got)
        else:
            self._failed.pop((model, version), None)
        return got

    def _load(self, model: str, version: str) -> _Version | str:
        if not (is_plain_name(model) and is_plain_name(version)):
            return NO_MODEL
        try:
            directory = self.registry.path(model, version)
            m = OnnxModel(directory, providers="cpu", intra_op_threads=1, verify_key=self.verify_key)
            m.load()
        except (ModelError, OSError, ValueError) as exc:
            log.warning("%s v%s does not load for explanations (%s); its requests are not explained", model,
                        version, exc)
            return NO_MODEL
        path = directory / PROFILE_FILE
        try:
            return _Version(m, ReferenceProfile.load(path), self.config)
        except (OSError, ValueError, KeyError, TypeError, LookupError) as exc:
            log.warning("%s v%s has no reference rows to explain against (%s: %s); rebuild its profile "
                        "(driftline profile build --force)", model, version, type(exc).__name__, exc)
            return NO_BACKGROUND


def summary(stats: ExplainStats) -> Mapping[str, Any]:
    """A log line's worth of a batch."""
    return {"explained": sum(stats.explained.values()), "skipped": sum(stats.skipped.values()),
            "calls": stats.calls, "cpu_ms": round(stats.cpu_s * 1000, 1)}
