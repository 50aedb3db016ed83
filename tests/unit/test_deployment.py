"""Deployment state, entity routing, variants in the score path, and registration — without a broker."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastavro import schemaless_reader
from scipy import stats

from driftline.inference.deployment import Deployment, key_buckets, live_variants
from driftline.inference.errors import ModelError
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry, register_version
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import HEADER, encode_many
from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
from driftline.streams.settings import EXAMPLE_MODELS

NOW = 1_767_225_700_000


def fnv_reference(key: str, salt: str = "") -> float:
    """The bucket function written out one character at a time, as the docstring describes it."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for ch in salt + key:
        h = ((h ^ ord(ch)) * 0x100000001B3) & mask
    for mul in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h ^= h >> 33
        h = (h * mul) & mask
    h ^= h >> 33
    return (h >> 11) / float(1 << 53)


def test_buckets_match_the_reference_are_uniform_and_sticky() -> None:
    keys = np.array([f"card-{i}" for i in range(100_000)] + ["", "kärtchen-€-7"], dtype=object)
    b = key_buckets(keys, salt="fraud")
    assert [fnv_reference(k, "fraud") for k in keys[[0, 1, 99_999, 100_000, 100_001]]] == \
        b[[0, 1, 99_999, 100_000, 100_001]].tolist()
    counts = np.histogram(b[:100_000], bins=50, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-4  # uniform: the share routed equals the fraction asked
    assert np.array_equal(key_buckets(keys[::-1], salt="fraud")[::-1], b)  # depends on the key alone
    assert not np.array_equal(key_buckets(keys, salt="other"), b)


def test_transitions_and_rollback() -> None:
    d = Deployment("fraud", "1")
    d = d.promote("2", 1).add_shadow("3", 2)
    assert (d.champion, d.history, d.shadows) == ("2", ("1",), ("3",))
    d = d.start_canary("3", 0.2, 3)
    assert d.shadows == () and d.canary == "3"  # a version moves from shadow to canary, not both
    with pytest.raises(ModelError, match="canary and an A/B"):
        d.start_ab("1", "3", 0.5, 4)
    assert d.rollback(5).canary is None and d.rollback(5).champion == "2"  # first: end the experiment
    assert d.rollback(5).rollback(6).champion == "1"  # then: the previous champion
    with pytest.raises(ModelError, match="nothing to roll back"):
        Deployment("fraud", "1").rollback(1)
    with pytest.raises(ModelError, match="fraction"):
        d.start_canary("3", 1.5, 1)
    with pytest.raises(ModelError, match="two variants"):
        Deployment("fraud", "1", canary="1", canary_fraction=0.1)
    ab = Deployment("fraud", "1").start_ab("2", "3", 0.3, 7)
    assert ab.versions() == ["1", "2", "3"] and live_variants(ab) == [("a", "2"), ("b", "3")]
    assert Deployment.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    with pytest.raises(ModelError, match="does not parse"):
        Deployment.from_dict({"model": "fraud"})


def test_routing_shares_and_growing_a_canary_moves_entities_one_way() -> None:
    b = key_buckets(np.array([f"card-{i}" for i in range(50_000)], dtype=object))
    small = dict((v, r) for v, _, r in Deployment("m", "1").start_canary("2", 0.1, 0).route(b))
    big = dict((v, r) for v, _, r in Deployment("m", "1").start_canary("2", 0.3, 0).route(b))
    for share, routes in ((0.1, small), (0.3, big)):
        assert abs(len(routes["canary"]) / len(b) - share) < 4 * np.sqrt(share * (1 - share) / len(b))
    assert set(small["canary"].tolist()) <= set(big["canary"].tolist())
    arms = {v: len(r) for v, _, r in Deployment("m", "1").start_ab("1", "2", 0.5, 0).route(b)}
    assert set(arms) == {"a", "b"} and abs(arms["b"] / len(b) - 0.5) < 0.01


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud v1 (the example), v2 (same ONNX file, registered anew) in a fresh registry."""
    root = tmp_path_factory.mktemp("registry")
    shutil.copytree(EXAMPLE_MODELS / "fraud", root / "fraud")
    template = json.loads((root / "fraud" / "1" / "manifest.json").read_text())
    register_version(root, root / "fraud" / "1" / "model.onnx", template, name="fraud", version="2",
                     created_at=datetime(2026, 11, 26, tzinfo=UTC), code_version="test", metrics={"auc": 0.8})
    return root


def test_register_writes_an_immutable_checked_version(registry_dir: Path, housing_dir: Path) -> None:
    manifest = json.loads((registry_dir / "fraud" / "2" / "manifest.json").read_text())
    assert manifest["version"] == "2" and manifest["metrics"] == {"auc": 0.8}
    assert manifest["created_at"] == "2026-11-26T00:00:00+00:00" and manifest["code_version"] == "test"
    assert ModelRegistry(registry_dir).versions("fraud") == ["1", "2"]
    template = json.loads((registry_dir / "fraud" / "1" / "manifest.json").read_text())
    with pytest.raises(ModelError, match="immutable"):
        register_version(registry_dir, registry_dir / "fraud" / "1" / "model.onnx", template, name="fraud",
                         version="2", created_at=datetime.now(UTC), code_version="test")
    # The housing regressor's ONNX file does not read the fraud features: refused, nothing left behind.
    with pytest.raises(ModelError, match="no input named|columns"):
        register_version(registry_dir, housing_dir / "model.onnx", template, name="fraud", version="9",
                         created_at=datetime.now(UTC), code_version="test")
    assert ModelRegistry(registry_dir).versions("fraud") == ["1", "2"]
    assert [p.name for p in (registry_dir / "fraud").iterdir() if p.name.startswith(".")] == []


def _load(root: Path, version: str) -> OnnxModel:
    m = OnnxModel(root / "fraud" / version, providers="cpu")
    m.load()
    return m


def _decode(catalog: SchemaCatalog, value: bytes) -> dict:
    return schemaless_reader(io.BytesIO(value[HEADER.size:]), catalog.latest("driftline.Prediction").fast, None)


def test_variants_in_one_batch_canary_and_shadow(
    catalog: SchemaCatalog, registry_dir: Path, housing_model: OnnxModel, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    v1, v2 = _load(registry_dir, "1"), _load(registry_dir, "2")
    served = ServedModel(v1, catalog, max_message_bytes=8192)
    pipe = ScorePipeline({"req": served}, catalog.latest("driftline.Prediction"), predictions_topic="p",
                         deadletter_topic="d", deadletter_max_bytes=8192)
    dep = Deployment("fraud", "1").start_canary("2", 0.25, NOW)
    assert served.deploy(dep, {"1": v1, "2": v2}) == []
    recs, _ = generator.generate(2000, rng)
    recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), recs)
    msgs = [RawMessage("req", 0, i, None, v) for i, v in enumerate(values)]
    out = pipe.process(msgs, NOW)
    preds = [_decode(catalog, p.value) for p in out.predictions]
    assert len(preds) == 2000 and out.shadow_predictions == []
    buckets = key_buckets(np.array([p["entity_key"] for p in preds], dtype=object), salt="fraud")
    assert [p["variant"] for p in preds] == ["canary" if b < 0.25 else "champion" for b in buckets]
    assert all(p["model_version"] == ("2" if p["variant"] == "canary" else "1") for p in preds)
    assert {s.variant: s.scored for s in out.stats} == {"champion": int((buckets >= 0.25).sum()),
                                                        "canary": int((buckets < 0.25).sum())}

    # Shadow: every served request scored again, on the shadow topic only.
    served.deploy(Deployment("fraud", "1").add_shadow("2", NOW), {"1": v1, "2": v2})
    out = pipe.process(msgs, NOW)
    main = [_decode(catalog, p.value) for p in out.predictions]
    shadow = [_decode(catalog, p.value) for p in out.shadow_predictions]
    assert {p.topic for p in out.shadow_predictions} == {"p.shadow"} and {p.topic for p in out.predictions} == {"p"}
    assert {p["variant"] for p in main} == {"champion"} and {p["variant"] for p in shadow} == {"shadow"}
    assert [p["request_id"] for p in shadow] == [p["request_id"] for p in main]
    np.testing.assert_allclose([p["score"] for p in shadow], [p["score"] for p in main])  # same ONNX file

    # A version that reads other inputs is refused; the deployment in force does not change.
    before = served.deployment
    with pytest.raises(ModelError, match="other features|reads"):
        served.deploy(Deployment("fraud", "1").start_canary("3", 0.1, NOW), {"1": v1, "3": housing_model})
    with pytest.raises(ModelError, match="not loaded"):
        served.deploy(Deployment("fraud", "1").promote("7", NOW), {"1": v1})
    assert served.deployment == before and served.model is v1


def test_io_binding_gives_the_same_scores(registry_dir: Path) -> None:
    plain = _load(registry_dir, "1")
    bound = OnnxModel(registry_dir / "fraud" / "1", providers="cpu", io_binding=True, graph_optimization="basic")
    bound.load()
    assert bound.uses_io_binding and not plain.uses_io_binding
    x = np.random.default_rng(3).uniform(0, 5, size=(777, plain.manifest.profile.width)).astype(np.float32)
    np.testing.assert_array_equal(bound.predict(x), plain.predict(x))
