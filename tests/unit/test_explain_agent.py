"""The explain agent's logic without a broker: scored records in, explanation records out, bad input skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.explain import picked
from driftline.detectors.profile import CategoricalReference, JointRows, NumericReference, ReferenceProfile
from driftline.inference.model import OnnxModel
from driftline.inference.registry import ModelRegistry
from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import decode, encode
from driftline.streams.core.explain import (
    MALFORMED,
    NO_BACKGROUND,
    NO_MODEL,
    SEAL_ERROR,
    SEALED_NO_KEY,
    ExplainConfig,
    ExplainCore,
    decode_rows,
)
from driftline.streams.core.profiling import PROFILE_FILE
from driftline.streams.core.sealing import Opener, seal_rows
from driftline.streams.metrics import Metrics
from tests.unit.test_explain import COLOUR_WEIGHTS, COLOURS, WEIGHTS, _logistic_columns, logistic  # noqa: F401

TOPIC = "t.explanations"
PII_KEY = b"k" * 32
#: float32 rows and scores, the logit of a float32 probability: see test_explain
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def registry(logistic: OnnxModel) -> tuple[ModelRegistry, dict[str, np.ndarray]]:  # noqa: F811
    """The logistic model's registry, its profile with 200 joint rows; returns the background rows too."""
    cols = _logistic_columns(np.random.default_rng(11), 200)
    feats = (*(NumericReference.build(f"x{i}", cols[f"x{i}"]) for i in range(len(WEIGHTS))),
             CategoricalReference.build("colour", cols["colour"], COLOURS))
    profile = ReferenceProfile(feats, NumericReference.build("score", logistic.predict_columns(cols)),
                               rows=JointRows.build(cols, np.random.default_rng(0)))
    profile.save(logistic.directory / PROFILE_FILE)
    assert profile.rows is not None
    return ModelRegistry(logistic.directory.parent.parent), profile.rows.columns


def scored_values(catalog: SchemaCatalog, model: OnnxModel, ids: list[str], cols: dict[str, np.ndarray], *,
                  sealed: bool = False, variant: str = "champion", version: str = "1") -> list[bytes]:
    """``{ns}.scored`` values as the score agent writes them: the matrix rows, sealed or not."""
    matrix = model.manifest.profile.encode(cols)
    scores = model.predict(matrix)
    rows = [r.tobytes() for r in matrix.astype("<f4")]
    if sealed:
        rows = seal_rows(PII_KEY, model.name, ids, rows)
    schema = catalog.latest("driftline.Scored")
    return [encode(schema, {"request_id": rid, "model": model.name, "model_version": version, "variant": variant,
                            "score": float(s), "predicted": None, "event_time": 1_000, "features": row,
                            "sealed": sealed})
            for rid, s, row in zip(ids, scores.tolist(), rows, strict=True)]


def core(registry: ModelRegistry, catalog: SchemaCatalog, fraction: float = 0.5, *, key: bool = False) -> ExplainCore:
    return ExplainCore(registry, catalog, TOPIC, ExplainConfig(fraction, samples=64, background=50),
                       opener=Opener(PII_KEY) if key else None)


def test_picked_requests_are_explained_and_sum_to_their_output(
        catalog: SchemaCatalog, logistic: OnnxModel,  # noqa: F811
        registry: tuple[ModelRegistry, dict[str, np.ndarray]]) -> None:
    reg, background = registry
    ids = [f"r{i}" for i in range(300)]
    cols = _logistic_columns(np.random.default_rng(12), 300)
    out, stats = core(reg, catalog).batch(scored_values(catalog, logistic, ids, cols))
    want = picked(ids, 0.5)
    assert 100 < want.sum() < 200 and len(out) == want.sum() == stats.explained["logistic"]
    assert [r.key for r in out] == [i.encode() for i, w in zip(ids, want.tolist(), strict=True) if w]
    assert {r.topic for r in out} == {TOPIC} and not stats.skipped and stats.calls >= 2
    recs = [decode(catalog, r.value)[1] for r in out]
    assert set(recs[0]) == {"request_id", "model", "model_version", "variant", "score", "link", "base", "value",
                            "features", "attributions", "method", "samples", "background", "event_time"}
    assert recs[0]["features"] == ["x0", "x1", "x2", "x3", "colour"] and recs[0]["link"] == "logit"
    assert recs[0]["method"] == "exact_shapley" and recs[0]["samples"] == 30 and recs[0]["background"] == 50
    phi = np.array([r["attributions"] for r in recs])
    value, base = np.array([r["value"] for r in recs]), np.array([r["base"] for r in recs])
    np.testing.assert_allclose(phi.sum(axis=1), value - base, atol=1e-9)  # efficiency, per record
    score = np.array([r["score"] for r in recs])
    np.testing.assert_allclose(value, np.log(score / (1 - score)), atol=LOGIT_TOLERANCE)  # the row the model saw
    # the closed form, with the background's first 50 joint rows as E[x]
    rows = {k: v[want] for k, v in cols.items()}
    for i, w in enumerate(WEIGHTS):
        np.testing.assert_allclose(phi[:, i], w * (rows[f"x{i}"] - background[f"x{i}"][:50].mean()),
                                   atol=LOGIT_TOLERANCE)
    cw = dict(zip(COLOURS, COLOUR_WEIGHTS.tolist(), strict=True))
    expected = np.array([cw[c] for c in rows["colour"]]) - np.mean([cw[c] for c in background["colour"][:50]])
    np.testing.assert_allclose(phi[:, 4], expected, atol=LOGIT_TOLERANCE)


def test_sealed_rows_open_with_the_key_and_are_skipped_without_it(
        catalog: SchemaCatalog, logistic: OnnxModel,  # noqa: F811
        registry: tuple[ModelRegistry, dict[str, np.ndarray]]) -> None:
    reg, _ = registry
    ids = [f"s{i}" for i in range(40)]
    values = scored_values(catalog, logistic, ids, _logistic_columns(np.random.default_rng(13), 40), sealed=True)
    plain, _ = core(reg, catalog, 1.0).batch(scored_values(catalog, logistic, ids,
                                                           _logistic_columns(np.random.default_rng(13), 40)))
    opened, stats = core(reg, catalog, 1.0, key=True).batch(values)
    assert len(opened) == 40 and not stats.skipped
    assert [decode(catalog, r.value)[1]["attributions"] for r in opened] == \
        [decode(catalog, r.value)[1]["attributions"] for r in plain]  # the same rows, opened
    out, stats = core(reg, catalog, 1.0).batch(values)
    assert out == [] and stats.skipped == {("logistic", SEALED_NO_KEY): 40}
    other = ExplainCore(reg, catalog, TOPIC, ExplainConfig(1.0, samples=64, background=50),
                        opener=Opener(b"another key of 32 bytes........."))
    out, stats = other.batch(values)
    assert out == [] and stats.skipped == {("logistic", SEAL_ERROR): 40}


def test_bad_input_is_counted_and_the_rest_explained(
        catalog: SchemaCatalog, logistic: OnnxModel,  # noqa: F811
        registry: tuple[ModelRegistry, dict[str, np.ndarray]]) -> None:
    reg, _ = registry
    cols = _logistic_columns(np.random.default_rng(14), 3)
    good = scored_values(catalog, logistic, ["g0", "g1", "g2"], cols)
    unknown = scored_values(catalog, logistic, ["u0"], {k: v[:1] for k, v in cols.items()}, version="9")
    shadow = scored_values(catalog, logistic, ["h0"], {k: v[:1] for k, v in cols.items()}, variant="shadow")
    short = encode(catalog.latest("driftline.Scored"), {
        "request_id": "w0", "model": "logistic", "model_version": "1", "variant": "champion", "score": 0.5,
        "predicted": None, "event_time": 0, "features": b"\0" * 12})
    out, stats = core(reg, catalog, 1.0).batch([b"garbage", None, *good, *unknown, *shadow, short])
    assert [r.key for r in out] == [b"g0", b"g1", b"g2"]  # shadow answers are not what a request got: not explained
    assert stats.skipped == {("?", MALFORMED): 2, ("logistic", NO_MODEL): 1, ("logistic", MALFORMED): 1}
    metrics = Metrics(__import__("prometheus_client").CollectorRegistry())
    metrics.observe_explain(stats)
    assert metrics.registry.get_sample_value("driftline_explanations_total", {"model": "logistic"}) == 3
    assert metrics.registry.get_sample_value("driftline_explanations_skipped_total",
                                             {"model": "logistic", "reason": NO_MODEL}) == 1


def test_a_version_without_joint_rows_is_skipped_as_no_background(
        catalog: SchemaCatalog, logistic: OnnxModel, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    root = tmp_path / "models"
    shutil.copytree(logistic.directory, root / "logistic" / "1")
    (root / "logistic" / "1" / PROFILE_FILE).unlink()
    cols = _logistic_columns(np.random.default_rng(15), 4)
    out, stats = core(ModelRegistry(root), catalog, 1.0).batch(
        scored_values(catalog, logistic, ["a", "b", "c", "d"], cols))
    assert out == [] and stats.skipped == {("logistic", NO_BACKGROUND): 4}


def test_rows_decode_back_to_the_columns_they_encode(logistic: OnnxModel) -> None:  # noqa: F811
    cols = _logistic_columns(np.random.default_rng(16), 50)
    profile = logistic.manifest.profile
    back = decode_rows(profile, profile.encode(cols))
    assert back["colour"].tolist() == cols["colour"].tolist()
    np.testing.assert_allclose(back["x1"], cols["x1"], rtol=1e-6)
    np.testing.assert_array_equal(profile.encode(back), profile.encode(cols))


def test_without_the_label_join_only_the_picked_rows_go_to_scored_and_all_are_explained(
        catalog: SchemaCatalog, fraud_model: OnnxModel, generator) -> None:  # type: ignore[no-untyped-def]
    from driftline.inference.registry import ModelRegistry as Registry
    from driftline.streams.core.pipeline import RawMessage, ScorePipeline, ServedModel
    from driftline.streams.settings import EXAMPLE_MODELS

    records, _ = generator.generate(300, np.random.default_rng(5))
    records = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in records]
    schema = catalog.latest("driftline.examples.CardTransaction")
    msgs = [RawMessage("ns.requests", 0, i, r["card_id"].encode(), encode(schema, r), [], 1)
            for i, r in enumerate(records)]

    def scoring(fraction: float) -> ScorePipeline:
        served = {"ns.requests": ServedModel(fraud_model, catalog, max_message_bytes=1 << 16)}
        return ScorePipeline(served, catalog.latest("driftline.Prediction"), predictions_topic="ns.predictions",
                             deadletter_topic="ns.deadletter", deadletter_max_bytes=1 << 20,
                             scored=(catalog.latest("driftline.Scored"), "ns.scored"), scored_fraction=fraction)

    every = scoring(1.0).process(msgs, 1_767_225_700_000).scored
    some = scoring(0.3).process(msgs, 1_767_225_700_000)
    ids = [r["request_id"] for r in records]
    want = [i for i, k in zip(ids, picked(ids, 0.3).tolist(), strict=True) if k]
    assert len(every) == 300 and len(some.predictions) == 300  # every request is still answered
    assert [r.key for r in some.scored] == [i.encode() for i in want]
    by_key = {r.key: r.value for r in every}
    assert all(decode(catalog, r.value)[1] == decode(catalog, by_key[r.key])[1] for r in some.scored)
    out, stats = ExplainCore(Registry(EXAMPLE_MODELS), catalog, TOPIC, ExplainConfig(0.3)).batch(
        [r.value for r in some.scored])
    assert [r.key for r in out] == [i.encode() for i in want] and not stats.skipped
    rec = decode(catalog, out[0].value)[1]
    assert rec["method"] == "kernel_shap" and len(rec["attributions"]) == 16 and rec["samples"] >= 256
    assert np.isclose(sum(rec["attributions"]), rec["value"] - rec["base"], atol=1e-9)


def test_importance_windows_close_by_event_time_and_a_shift_shows(
        catalog: SchemaCatalog, logistic: OnnxModel,  # noqa: F811
        registry: tuple[ModelRegistry, dict[str, np.ndarray]]) -> None:
    from driftline.detectors.importance import importance_shift

    reg, _ = registry
    schema = catalog.latest("driftline.Scored")
    rng = np.random.default_rng(17)
    calm = _logistic_columns(rng, 200)
    moved = _logistic_columns(rng, 200)
    moved["x1"] = moved["x1"] * 10.0  # the weak feature x1 (weight -0.8) varies ten times more: it matters more
    values = []
    for i, (cols, at) in enumerate(((calm, 1_000), (moved, 61_000), (calm, 121_000))):
        ids = [f"w{i}-{j}" for j in range(200)]
        for v in scored_values(catalog, logistic, ids, cols):
            rec = decode(catalog, v)[1]
            values.append(encode(schema, {**rec, "event_time": at}))
    c = ExplainCore(reg, catalog, TOPIC, ExplainConfig(1.0, samples=64, background=50, window_ms=60_000))
    _, first = c.batch(values[:300])  # the first window and half of the second: nothing closed yet but the first
    _, second = c.batch(values[300:])
    closed = first.closed + second.closed
    assert [(w.start_ms, w.n) for w in closed] == [(0, 200), (60_000, 200)]  # the third stays open
    calm_w, moved_w = closed
    assert calm_w.reference is not None and calm_w.shift is not None and moved_w.shift is not None
    assert calm_w.shift < 0.1 < moved_w.shift  # same distribution as the reference rows; x1's share grew
    assert moved_w.mean_abs[1] > 5 * calm_w.mean_abs[1]
    assert np.isclose(moved_w.shift, importance_shift(np.array(moved_w.reference), np.array(moved_w.mean_abs)))
    metrics = Metrics(__import__("prometheus_client").CollectorRegistry())
    metrics.observe_explain(second)
    assert metrics.registry.get_sample_value("driftline_explain_importance_shift",
                                             {"model": "logistic", "version": "1"}) == moved_w.shift


def test_a_version_that_does_not_load_is_not_loaded_again_on_every_batch(
        catalog: SchemaCatalog, logistic: OnnxModel,  # noqa: F811
        registry: tuple[ModelRegistry, dict[str, np.ndarray]]) -> None:
    reg, _ = registry
    c = core(reg, catalog, 1.0)
    loads: list[tuple[str, str]] = []
    real = c._load

    def counted(model: str, version: str):  # type: ignore[no-untyped-def]
        loads.append((model, version))
        return real(model, version)

    c._load = counted  # type: ignore[method-assign]
    cols = _logistic_columns(np.random.default_rng(18), 2)
    for _ in range(3):
        _, stats = c.batch(scored_values(catalog, logistic, ["a", "b"], cols, version="9"))
        assert stats.skipped == {("logistic", NO_MODEL): 2}
    assert loads == [("logistic", "9")]  # remembered for RETRY_S, not reloaded and logged per poll


def test_a_batch_that_raises_is_counted_and_its_offsets_still_move_on() -> None:
    from prometheus_client import CollectorRegistry

    from driftline.streams.app.explain import ExplainLoop
    from driftline.streams.core.pipeline import RawMessage

    class Broken:
        def batch(self, values: list[bytes | None]) -> None:
            raise RuntimeError("a bug")

    class Source:
        fatal_error = None
        stored: list[list[RawMessage]] = []

        def poll_batch(self, n: int, timeout_s: float) -> list[RawMessage]:
            return [RawMessage("t.scored", 0, i, b"k", b"v") for i in range(3)]

        def store_through(self, msgs: list[RawMessage]) -> None:
            self.stored.append(msgs)

    class Sink:
        fatal_error = None
        in_flight = 0
        sent: list[object] = []

        def send(self, records: list[object], token: object) -> None:
            assert records == []
            self.sent.append(token)

        def poll(self, timeout_s: float = 0.0) -> list[object]:
            done, self.sent = self.sent, []
            return done

    metrics = Metrics(CollectorRegistry())
    source = Source()
    loop = ExplainLoop(Broken(), source, Sink(), metrics)  # type: ignore[arg-type]
    loop.step()
    assert metrics.registry.get_sample_value("driftline_explanations_skipped_total",
                                             {"model": "?", "reason": "failed"}) == 3
    assert [m.offset for batch in source.stored for m in batch] == [0, 1, 2]


def test_one_odd_row_costs_only_itself_and_a_far_future_request_cannot_stall_the_windows(
        catalog: SchemaCatalog, logistic: OnnxModel,  # noqa: F811
        registry: tuple[ModelRegistry, dict[str, np.ndarray]]) -> None:
    reg, _ = registry
    schema = catalog.latest("driftline.Scored")
    cols = _logistic_columns(np.random.default_rng(5), 6)
    ids = [f"odd-{i}" for i in range(6)]
    recs = [decode(catalog, v)[1] for v in scored_values(catalog, logistic, ids, cols)]
    width = len(recs[0]["features"]) // 4
    recs[2]["features"] = np.full(width, np.inf, dtype="<f4").tobytes()  # a row no model value comes from
    c = ExplainCore(reg, catalog, TOPIC, ExplainConfig(1.0, samples=64, background=50, window_ms=60_000))
    out, stats = c.batch([encode(schema, r) for r in recs], now_ms=1_000)
    assert {o.key.decode() for o in out} == set(ids) - {"odd-2"}  # the neighbours are explained
    assert sum(stats.skipped.values()) == 1

    # A request stamped in 2100 counts in the window of the clock's time, so later windows still close.
    future = [{**r, "request_id": f"f-{i}", "event_time": 4_102_444_800_000} for i, r in enumerate(recs) if i != 2]
    later = [{**r, "request_id": f"l-{i}", "event_time": 130_000} for i, r in enumerate(recs) if i != 2]
    _, first = c.batch([encode(schema, r) for r in future], now_ms=1_000)
    _, second = c.batch([encode(schema, r) for r in later], now_ms=130_000)
    assert [w.start_ms for w in first.closed + second.closed] == [0, 60_000]
