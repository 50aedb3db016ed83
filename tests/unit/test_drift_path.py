"""The drift path without a broker: folding batches into windows, merging workers, alerts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.policy import PolicyConfig
from driftline.detectors.profile import ReferenceProfile
from driftline.detectors.sketch import WindowSketch
from driftline.inference.model import OnnxModel
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode_many
from driftline.streams.core.drift import DriftMonitor, alert_record
from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.windows import WindowFolder
from driftline.streams.settings import EXAMPLE_MODELS

CARD = "driftline.examples.CardTransaction"
WINDOW_MS = 10_000


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return ReferenceProfile.load(EXAMPLE_MODELS / "fraud" / "1" / PROFILE_FILE)


def pipeline_with(catalog: SchemaCatalog, model: OnnxModel, folder: WindowFolder) -> ScorePipeline:
    return ScorePipeline({"req": ServedModel(model, catalog, max_message_bytes=8192, folder=folder)},
                         catalog.latest("driftline.Prediction"), predictions_topic="p", deadletter_topic="d",
                         deadletter_max_bytes=8192)


def traffic(catalog: SchemaCatalog, generator, rng, n: int, drift=None) -> list[RawMessage]:  # type: ignore[no-untyped-def]
    recs, _ = generator.generate(n, rng, drift=drift or generator.NO_DRIFT)
    recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
    values = encode_many(catalog.latest(CARD), recs)
    values[::50] = [b"junk"] * len(values[::50])  # some dead letters too
    return [RawMessage("req", i % 4, i, None, v) for i, v in enumerate(values)]


def run_windows(catalog, model, profile, batches_per_worker, workers: int) -> list[WindowSketch]:  # type: ignore[no-untyped-def]
    """Score the same windows of traffic on ``workers`` workers; return each worker's closed sketches."""
    pipes = [pipeline_with(catalog, model, WindowFolder(profile, "fraud", "1", f"w{i}", length_ms=WINDOW_MS))
             for i in range(workers)]
    closed: list[WindowSketch] = []
    for w, msgs in enumerate(batches_per_worker):
        now = w * WINDOW_MS + 1
        for i, pipe in enumerate(pipes):
            closed += pipe.process([m for m in msgs if m.partition % workers == i], now).sketches
    for pipe in pipes:
        closed += pipe.tick(len(batches_per_worker) * WINDOW_MS + 1)
    return closed


def alerts_of(profile: ReferenceProfile, sketches: list[WindowSketch]) -> list[tuple[str, str | None, int]]:
    monitor = DriftMonitor({"fraud": profile}, PolicyConfig(), grace_ms=0)
    for s in sketches:
        monitor.add(s)
    out = []
    for sketch, decisions, _, _ in monitor.close_due(10**15):
        out += [(a.kind, a.feature, a.window_start) for a in
                (alert_record(sketch, d, 0) for d in decisions)]
    return out


def test_one_worker_and_two_workers_give_the_same_windows_and_alerts(
    catalog: SchemaCatalog, fraud_model: OnnxModel, profile: ReferenceProfile, generator  # type: ignore[no-untyped-def]
) -> None:
    rng = np.random.default_rng(21)
    shifted = generator.Drift(shift={"amount": 1.0})
    batches = [traffic(catalog, generator, rng, 2000, shifted if w >= 3 else None) for w in range(6)]
    one = run_windows(catalog, fraud_model, profile, batches, workers=1)
    two = run_windows(catalog, fraud_model, profile, batches, workers=2)
    assert len(one) == 6 and len(two) == 12 and {len(s.contributors) for s in two} == {1}
    merged: dict[int, WindowSketch] = {}
    for s in two:
        merged[s.start_ms] = merged[s.start_ms] + s if s.start_ms in merged else s
    for s in one:
        m = merged[s.start_ms]
        assert (m.messages, m.dead_letters) == (s.messages, s.dead_letters) == (2000, 40)
        for name, col in s.columns.items():
            assert col.counts.tolist() == m.columns[name].counts.tolist()
            assert col.fine.tolist() == m.columns[name].fine.tolist()
    a1, a2 = alerts_of(profile, one), alerts_of(profile, two)
    assert a1 == a2
    assert {f for k, f, _ in a1 if k == "data_drift"} == {"amount"}
    assert min(start for _, _, start in a1) >= 3 * WINDOW_MS


def test_count_windows_close_by_messages(catalog: SchemaCatalog, fraud_model: OnnxModel,
                                         profile: ReferenceProfile, generator) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    pipe = pipeline_with(catalog, fraud_model, WindowFolder(profile, "fraud", "1", "w", length_ms=None,
                                                            length_events=1000))
    closed = []
    for i in range(7):
        closed += pipe.process(traffic(catalog, generator, rng, 400), 1000 * i).sketches
    assert [s.messages for s in closed] == [1200, 1200]  # closes on the batch that reaches 1,000
    assert pipe.served["req"].folder is not None and pipe.served["req"].folder.current is not None
    assert pipe.served["req"].folder.current.messages == 400  # the seventh batch opened the third window
    with pytest.raises(ValueError, match="exactly one"):
        WindowFolder(profile, "fraud", "1", "w", length_ms=1000, length_events=10)


def test_profile_build_refuses_to_overwrite_and_covers_every_feature(
    tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    import json
    import shutil

    from driftline.streams.core.profiling import build_profile
    from driftline.streams.errors import ConfigError

    target = tmp_path / "fraud" / "1"
    shutil.copytree(EXAMPLE_MODELS / "fraud" / "1", target)
    (target / PROFILE_FILE).unlink()
    recs, _ = generator.generate(3000, rng)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    path, rows = build_profile(target, data, catalog)
    assert rows == sum(1 for r in recs if r["ip_risk"] is not None)
    built = ReferenceProfile.load(path)
    from driftline.inference.manifest import Manifest

    assert [f.name for f in built.features] == [f.name for f in Manifest.read(target).profile.features]
    assert 0.0 <= built.score.mean <= 1.0
    assert built.rows is not None and built.rows.n == 256  # whole rows, for ranking drift by effect on the score
    assert set(built.rows.columns) == {f.name for f in built.features}
    with pytest.raises(ConfigError, match="exists"):
        build_profile(target, data, catalog)


def test_a_monitor_resumed_from_its_snapshot_alerts_as_if_it_never_stopped(
    catalog: SchemaCatalog, fraud_model: OnnxModel, profile: ReferenceProfile, generator  # type: ignore[no-untyped-def]
) -> None:
    import json

    rng = np.random.default_rng(8)
    shifted = generator.Drift(shift={"amount": 1.0})
    batches = [traffic(catalog, generator, rng, 1500, shifted if w >= 2 else None) for w in range(6)]
    sketches = run_windows(catalog, fraud_model, profile, batches, workers=2)  # two per window
    cfg = PolicyConfig(k=2, m=3)

    def replay(monitor: DriftMonitor, items: list[tuple[int, WindowSketch]]) -> list[tuple[str, str | None, int]]:
        out = []
        for offset, s in items:
            monitor.add(s, (0, offset))
            for sketch, decisions, _, _ in monitor.close_due(s.start_ms):  # windows before this one are due
                out += [(a.kind, a.feature, a.window_start) for a in
                        (alert_record(sketch, d, 0) for d in decisions)]
        for sketch, decisions, _, _ in monitor.close_due(10**15):
            out += [(a.kind, a.feature, a.window_start) for a in
                    (alert_record(sketch, d, 0) for d in decisions)]
        return out

    items = list(enumerate(sketches))
    straight = replay(DriftMonitor({"fraud": profile}, cfg, grace_ms=0), items)
    assert {f for k, f, _ in straight if k == "data_drift"} == {"amount"}

    # Stop after the 7th sketch: window 2 (the first drifted one) is closed, half of window 3 pending ...
    first = DriftMonitor({"fraud": profile}, cfg, grace_ms=0)
    before: list[tuple[str, str | None, int]] = []
    for offset, s in items[:7]:
        first.add(s, (0, offset))
        for sketch, decisions, _, _ in first.close_due(s.start_ms):
            before += [(a.kind, a.feature, a.window_start) for a in
                       (alert_record(sketch, d, 0) for d in decisions)]
    state = json.loads(json.dumps(first.snapshot("fraud")))  # through the wire format
    assert len(state["pending"]) == 1 and state["applied"] == [0, 6]
    # ... and resume on a new monitor that sees the last two sketches again (redelivered) and the rest.
    second = DriftMonitor({"fraud": profile}, cfg, grace_ms=0)
    second.restore("fraud", state)
    assert second.window_count("fraud") == first.window_count("fraud") == 3
    assert not second.add(items[5][1], (0, 5)) and not second.add(items[6][1], (0, 6))
    after = replay(second, items[7:])
    assert before + after == straight

    fresh = DriftMonitor({"fraud": profile}, cfg, grace_ms=0)  # no resume: hysteresis starts over
    assert min(w for _, _, w in replay(fresh, items[7:])) > min(w for _, _, w in after)
    with pytest.raises(ValueError, match="format"):
        fresh.restore("fraud", {**state, "format": 99})
