"""Attributions checked against what they must be: a closed form, the Shapley definition, shap's KernelExplainer.

The models are real ONNX graphs written with the ONNX helper and served
through :class:`OnnxModel`, as the explain agent serves them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.explain import (
    EXACT,
    KERNEL_SHAP,
    ShapleyExplainer,
    coalitions,
    exact_shapley,
    link,
    picked,
)
from driftline.inference.model import OnnxModel
from driftline.inference.registry import write_version

WEIGHTS = np.array([1.5, -0.8, 0.0, 0.3], dtype=np.float32)
COLOURS = ("red", "green", "blue")
COLOUR_WEIGHTS = np.array([0.7, -0.4, 0.0], dtype=np.float32)
BIAS = -0.2
#: the ONNX graph computes in float32; the log-odds of its float32 probability carry ~1e-5 of rounding
LOGIT_TOLERANCE = 1e-3
#: every coalition evaluated: the regression and the definition are the same numbers but for float64 rounding
EXACT_TOLERANCE = 1e-9
#: 40 of the 62 coalitions of 6 features (sizes 1 and 5 whole, 28 drawn): the error, relative to the largest attribution
SAMPLED_TOLERANCE = 0.08  # seen: 0.03-0.045 over seeds


def _manifest(name: str, features: list[dict[str, object]], task: str = "binary_classification") -> dict[str, object]:
    return {
        "name": name, "version": "1", "task": task, "labels": ["no", "yes"], "threshold": 0.5,
        "request": {"subject": "driftline.tests.Toy", "id_field": "id", "key_field": "id", "time_field": None},
        "features": features, "onnx": {"input": "features", "output": "score", "output_index": 0},
    }


def _save(graph: object, root: Path, manifest: dict[str, object]) -> OnnxModel:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_version(root, bytes(model.SerializeToString()), manifest)
    m = OnnxModel(root / str(manifest["name"]) / "1", providers="cpu")
    m.load()
    return m


@pytest.fixture(scope="module")
def logistic(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    """sigmoid(w·x + c[colour] + bias) over four numeric features and a one-hot colour."""
    from onnx import TensorProto, helper

    w = np.concatenate([WEIGHTS, COLOUR_WEIGHTS]).reshape(-1, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["score"])],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(w)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [1], [BIAS])],
    )
    feats: list[dict[str, object]] = [{"name": f"x{i}", "kind": "numeric"} for i in range(len(WEIGHTS))]
    feats.append({"name": "colour", "kind": "categorical", "categories": list(COLOURS)})
    return _save(graph, tmp_path_factory.mktemp("models"), _manifest("logistic", feats))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    """A 6-16-1 tanh MLP with seeded random weights: features that interact, so no closed form."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    w1, b1 = rng.normal(0, 1, (6, 16)).astype(np.float32), rng.normal(0, 0.5, 16).astype(np.float32)
    w2 = rng.normal(0, 1, (16, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
         helper.make_node("Tanh", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["score"])],
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor(n, TensorProto.FLOAT, list(a.shape), a.ravel().tolist())
         for n, a in (("w1", w1), ("b1", b1), ("w2", w2))],
    )
    feats: list[dict[str, object]] = [{"name": f"x{i}", "kind": "numeric"} for i in range(6)]
    return _save(graph, tmp_path_factory.mktemp("models"), _manifest("mlp", feats))


def _logistic_columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {f"x{i}": rng.normal(i, 1.0 + i, n) for i in range(len(WEIGHTS))}
    cols["colour"] = rng.choice(np.array(COLOURS, dtype=object), n)
    return cols


def _numeric(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    return rng.normal(0, 1.0, (n, m)).astype(np.float32)


def _groups(model: OnnxModel) -> list[range]:
    """Each feature's columns of the model's matrix (the colour's three one-hot columns are one feature)."""
    bounds = np.cumsum([0, *(f.width for f in model.manifest.profile.features)]).tolist()
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("samples", [64, 12])  # 5 features: 30 coalitions, all of them (64) or 12 sampled
def test_a_logistic_model_gets_its_closed_form_in_log_odds(logistic: OnnxModel, samples: int) -> None:
    rng = np.random.default_rng(1)
    bg, x = _logistic_columns(rng, 100), _logistic_columns(rng, 50)
    encode = logistic.manifest.profile.encode
    e = ShapleyExplainer(encode(bg), logistic.predict, groups=_groups(logistic), link_fn="logit", samples=samples)
    a = e.explain(encode(x))
    assert a.method == (EXACT if samples == 64 else KERNEL_SHAP)
    expected = np.empty((50, 5))
    for i, w in enumerate(WEIGHTS):
        expected[:, i] = w * (x[f"x{i}"] - bg[f"x{i}"].mean())
    colour_w = dict(zip(COLOURS, COLOUR_WEIGHTS.tolist(), strict=True))
    cw = np.array([colour_w[c] for c in x["colour"]])
    expected[:, 4] = cw - np.mean([colour_w[c] for c in bg["colour"]])
    # an additive model in log-odds is fitted exactly by any coalitions that determine it
    np.testing.assert_allclose(a.phi, expected, atol=LOGIT_TOLERANCE)
    assert np.abs(a.phi[:, 2]).max() < LOGIT_TOLERANCE  # weight 0: nothing attributed to it


def test_an_mlp_gets_its_exact_shapley_values(mlp: OnnxModel) -> None:
    rng = np.random.default_rng(2)
    bg, x = _numeric(rng, 64, 6), _numeric(rng, 20, 6)
    e = ShapleyExplainer(bg, mlp.predict, link_fn="logit", samples=62)
    a = e.explain(x)
    truth = exact_shapley(e, x)
    assert a.method == EXACT and a.samples == 62
    np.testing.assert_allclose(a.phi, truth, atol=EXACT_TOLERANCE * max(1.0, np.abs(truth).max()))
    assert np.abs(truth).max() > 0.1  # a test of something: the attributions are far from 0


def test_sampled_coalitions_estimate_the_mlps_shapley_values(mlp: OnnxModel) -> None:
    rng = np.random.default_rng(3)
    bg, x = _numeric(rng, 64, 6), _numeric(rng, 20, 6)
    e = ShapleyExplainer(bg, mlp.predict, link_fn="logit", samples=40, seed=5)
    a = e.explain(x)
    truth = exact_shapley(e, x)
    assert a.method == KERNEL_SHAP
    scale = np.abs(truth).max(axis=1, keepdims=True)
    assert (np.abs(a.phi - truth) / scale).max() < SAMPLED_TOLERANCE


@pytest.mark.parametrize("samples", [62, 16])
def test_attributions_sum_to_the_output_minus_the_base_for_every_row(mlp: OnnxModel, samples: int) -> None:
    rng = np.random.default_rng(4)
    bg, x = _numeric(rng, 32, 6), _numeric(rng, 30, 6)
    e = ShapleyExplainer(bg, mlp.predict, link_fn="logit", samples=samples)
    a = e.explain(x)
    np.testing.assert_allclose(a.phi.sum(axis=1), a.value - a.base, atol=1e-9)
    np.testing.assert_allclose(a.value, link(mlp.predict(x), "logit"), atol=1e-9)
    np.testing.assert_allclose(a.base, link(mlp.predict(bg), "logit").mean(), atol=1e-9)


def test_big_batches_not_many_small_calls(mlp: OnnxModel) -> None:
    rng = np.random.default_rng(5)
    bg, x = _numeric(rng, 64, 6), _numeric(rng, 10, 6)
    calls: list[int] = []

    def counted(matrix: np.ndarray) -> np.ndarray:
        calls.append(len(matrix))
        return mlp.predict(matrix)

    e = ShapleyExplainer(bg, counted, link_fn="logit", samples=62, max_rows=20_000)
    a = e.explain(x)
    # 10 rows x 62 coalitions x 64 background rows = 39,680 rows: 2 chunks, plus the base and the rows' outputs
    assert a.calls == len(calls) == 4
    assert max(calls) <= 20_000 and sum(calls) == 64 + 10 + 10 * 62 * 64
    chunked = ShapleyExplainer(bg, mlp.predict, link_fn="logit", samples=62, max_rows=1)
    np.testing.assert_allclose(chunked.explain(x).phi, a.phi, atol=1e-12)  # chunking changes nothing


def test_a_rows_attributions_do_not_depend_on_its_neighbours(mlp: OnnxModel) -> None:
    rng = np.random.default_rng(6)
    bg, x = _numeric(rng, 32, 6), _numeric(rng, 8, 6)
    e = ShapleyExplainer(bg, mlp.predict, link_fn="logit", samples=20, seed=1)
    together = e.explain(x).phi
    alone = e.explain(x[3:4]).phi
    np.testing.assert_allclose(alone[0], together[3], atol=1e-9)


def test_shap_kernel_explainer_agrees(mlp: OnnxModel) -> None:
    shap = pytest.importorskip("shap")
    rng = np.random.default_rng(8)
    bg, x = _numeric(rng, 24, 6), _numeric(rng, 5, 6)
    e = ShapleyExplainer(bg, mlp.predict, samples=62)  # identity link: shap's logit link averages probabilities
    ours = e.explain(x)

    def f(matrix: np.ndarray) -> np.ndarray:
        return mlp.predict(matrix.astype(np.float32))

    explainer = shap.KernelExplainer(f, bg.astype(np.float64))
    theirs = np.asarray(explainer.shap_values(x.astype(np.float64), nsamples=62, silent=True))
    assert np.isclose(float(explainer.expected_value), ours.base, atol=1e-6)
    np.testing.assert_allclose(ours.phi, theirs, atol=1e-5)


def test_the_pick_is_a_function_of_the_request_id() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    tenth, fifth = picked(ids, 0.1), picked(ids, 0.2)
    assert np.array_equal(tenth, picked(list(ids), 0.1))  # every worker, every run
    assert 0.09 < tenth.mean() < 0.11 and 0.19 < fifth.mean() < 0.21
    assert not (tenth & ~fifth).any()  # a larger share keeps the smaller one's requests
    assert not picked(ids, 0.0).any() and picked(ids[:3], 1.0).all()


def test_coalitions_are_all_of_them_when_they_fit() -> None:
    z, w, every = coalitions(4, 14, np.random.default_rng(0))
    assert every and len(z) == 14 and len({tuple(r) for r in z.tolist()}) == 14
    assert not (z.all(axis=1) | ~z.any(axis=1)).any()
    np.testing.assert_allclose(w[z.sum(axis=1) == 1], 3 / (4 * 1 * 3))
    z, w, every = coalitions(10, 100, np.random.default_rng(0))
    # sizes 1 and 9 whole (20 coalitions: the kernel's mass gives them 39 of the 100), then 40 drawn pairs
    assert not every and len(z) == 100 and set(z[:20].sum(axis=1).tolist()) == {1, 9}
    assert len({tuple(r) for r in z[:20].tolist()}) == 20 and np.array_equal(z[20:60], ~z[60:])
    assert set(z[20:].sum(axis=1).tolist()) <= set(range(2, 9)) and np.isclose(w.sum(), 1.0)
    assert not (z.all(axis=1) | ~z.any(axis=1)).any()


def test_a_model_that_gives_nan_is_refused(mlp: OnnxModel) -> None:
    bg = _numeric(np.random.default_rng(0), 8, 2)
    e = ShapleyExplainer(bg, lambda m: np.full(len(m), np.nan))
    with pytest.raises(ValueError, match="finite"):
        e.explain(bg)


@pytest.mark.parametrize(("kwargs", "word"), [({"samples": 1}, "samples"), ({"max_rows": 0}, "max_rows"),
                                               ({"groups": [[0], [0]]}, "groups"), ({"groups": [[0]]}, "groups")])
def test_bad_arguments_name_themselves(kwargs: dict[str, object], word: str) -> None:
    bg = np.zeros((3, 2))
    with pytest.raises(ValueError, match=word):
        ShapleyExplainer(bg, lambda m: m[:, 0], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="background"):
        ShapleyExplainer(np.zeros((0, 2)), lambda m: m[:, 0])
    with pytest.raises(ValueError, match="rows"):
        ShapleyExplainer(bg, lambda m: m[:, 0]).explain(np.zeros((2, 3)))


def test_window_importance_merges_and_its_shift_is_the_moved_share() -> None:
    from scipy.stats import spearmanr

    from driftline.detectors.importance import ImportanceWindow, importance_shift, rank_correlation, shares

    rng = np.random.default_rng(9)
    phi = rng.normal(0, [3.0, 1.0, 0.5, 0.1], (400, 4))
    whole = ImportanceWindow.empty(("a", "b", "c", "d"))
    whole.add(phi)
    left, right = ImportanceWindow.empty(whole.features), ImportanceWindow.empty(whole.features)
    left.add(phi[:150])
    right.add(phi[150:])
    merged = left + right
    assert merged.n == 400 and np.allclose(merged.mean_abs, whole.mean_abs)  # per-worker windows combine exactly
    np.testing.assert_allclose(whole.mean_abs, np.abs(phi).mean(axis=0))
    ref = whole.mean_abs
    assert importance_shift(ref, 2.5 * ref) < 1e-12  # every attribution larger alike: no shift in shares
    swapped = ref[[1, 0, 2, 3]]  # the two leading features trade places
    moved = shares(ref)[0] - shares(ref)[1]
    assert np.isclose(importance_shift(ref, swapped), moved) and moved > 0.3
    assert np.isclose(rank_correlation(ref, swapped), spearmanr(ref, swapped).statistic)
    ties = np.array([1.0, 1.0, 0.5, 0.2])
    assert np.isclose(rank_correlation(ties, ref), spearmanr(ties, ref).statistic)
    with pytest.raises(ValueError, match="shape"):
        whole.add(phi[:, :3])
