"""Promotion guardrails: a challenger that wins on log loss but loses a metric the business runs on is rejected."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from driftline.detectors.compare import at_threshold, best_threshold, compare, guardrails
from driftline.inference.manifest import Manifest
from driftline.inference.registry import ModelRegistry
from driftline.streams.errors import ConfigError
from driftline.streams.settings import EXAMPLE_MODELS, load_settings
from driftline.streams.trainer.service import decide

METRICS = ("accuracy", "precision", "recall", "f1", "cost")


def champion_manifest() -> Manifest:
    return Manifest.read(ModelRegistry(EXAMPLE_MODELS).path("fraud", "1"))


@pytest.mark.parametrize("seed", range(5))
def test_metrics_at_the_threshold_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(2_000) < 0.07
    scores = np.clip(0.4 * y + rng.normal(0.3, 0.2, 2_000), 0, 1)
    got = at_threshold(y, scores, 0.5, cost_fp=1.0, cost_fn=20.0)
    pred = scores >= 0.5
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert got["cost"] == pytest.approx((fp + 20.0 * fn) / len(y))


# Per metric: labels, champion and challenger scores (threshold 0.5) where the challenger loses that metric.
LOSSES = {
    "accuracy": ([1, 1, 0, 0, 0, 0], [.9, .9, .1, .1, .1, .1], [.9, .9, .6, .1, .1, .1]),
    "precision": ([1, 1, 0, 0, 0, 0], [.9, .9, .1, .1, .1, .1], [.9, .9, .6, .6, .1, .1]),
    "recall": ([1, 1, 0, 0, 0, 0], [.9, .9, .1, .1, .1, .1], [.9, .4, .1, .1, .1, .1]),
    "f1": ([1, 1, 1, 0, 0, 0], [.9, .9, .9, .6, .1, .1], [.9, .4, .4, .1, .1, .1]),
    "cost": ([1, 1, 0, 0, 0, 0], [.9, .9, .6, .1, .1, .1], [.9, .4, .1, .1, .1, .1]),  # one miss costs 10 alarms
}


@pytest.mark.parametrize("metric", METRICS)
def test_each_guardrail_catches_a_challenger_that_loses_it(metric: str) -> None:
    y, champ, chal = (np.array(v, dtype=float) for v in LOSSES[metric])
    [lost] = guardrails(y, champ, chal, [metric], threshold=0.5, tolerance=0.02, cost_fp=1.0, cost_fn=10.0)
    assert not lost.held and lost.metric == metric
    [same] = guardrails(y, champ, champ, [metric], threshold=0.5, tolerance=0.0, cost_fp=1.0, cost_fn=10.0)
    assert same.held  # a tie keeps it
    [better] = guardrails(y, chal, champ, [metric], threshold=0.5, tolerance=0.0, cost_fp=1.0, cost_fn=10.0)
    assert better.held


def test_a_tolerance_lets_a_small_loss_through() -> None:
    y = np.array([1] * 50 + [0] * 950, dtype=float)
    champ = np.where(y == 1, 0.9, 0.1)
    chal = champ.copy()
    chal[0] = 0.1  # one positive of 50 missed: recall 1.00 → 0.98
    assert guardrails(y, champ, chal, ["recall"], threshold=0.5, tolerance=0.02)[0].held
    assert not guardrails(y, champ, chal, ["recall"], threshold=0.5, tolerance=0.01)[0].held
    with pytest.raises(ValueError, match="guardrail metric"):
        guardrails(y, champ, chal, ["auc"], threshold=0.5, tolerance=0.0)


def demo_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `make demo` promoted: 5 % positives; the champion ranks well but is overconfident; the
    challenger is calibrated, so its log loss is lower, but no score reaches the threshold: it never flags."""
    rng = np.random.default_rng(seed)
    y = rng.random(1_500) < 0.05
    signal = np.where(y, rng.normal(2.0, 1.0, 1_500), rng.normal(0.0, 1.0, 1_500))
    champion = 1 / (1 + np.exp(-3.0 * (signal - 1.0)))
    challenger = np.clip(0.03 + 0.1 * (signal > 1.5), 0, 0.45)
    return y.astype(float), champion, challenger


def test_the_demo_promotion_is_rejected_for_its_recall_at_the_champions_threshold() -> None:
    s = load_settings()
    paired = demo_case(0)
    assert compare(*paired, metric="log_loss", alpha=s.drift_alpha)["better"]  # what promoted it before
    better, detail = decide(paired, s, champion_manifest(), "1", "2")
    assert not better and "loses recall, f1" in detail, detail
    unguarded = s.model_copy(update={"promote_guardrails": []})
    assert decide(paired, unguarded, champion_manifest(), "1", "2")[0]


def test_a_challenger_better_on_everything_is_promoted_and_says_so() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(1_500) < 0.2
    champion = np.clip(0.5 * y + rng.normal(0.25, 0.25, 1_500), 0.01, 0.99)
    challenger = np.clip(0.7 * y + rng.normal(0.15, 0.12, 1_500), 0.01, 0.99)
    better, detail = decide((y.astype(float), champion, challenger), load_settings(), champion_manifest(), "1", "2")
    assert better and "guardrails kept (recall" in detail, detail


def test_guardrails_are_settings() -> None:
    s = load_settings(promote_guardrails=["cost", "precision"], cost_false_negative=25)
    assert s.promote_guardrails == ["cost", "precision"] and s.cost_false_negative == 25
    with pytest.raises(ConfigError, match="PROMOTE_GUARDRAILS.*'recall'"):
        load_settings(promote_guardrails=["auc"])


@pytest.mark.parametrize("metric", ["f1", "accuracy", "cost"])
def test_the_best_threshold_is_the_best_of_every_cut(metric: str) -> None:
    """Brute force over every distinct score as a cut, with scikit-learn's metrics."""
    rng = np.random.default_rng(8)
    y = rng.random(600) < 0.05
    scores = np.round(np.clip(0.15 * y + rng.normal(0.1, 0.06, 600), 0, 1), 3)  # calibrated: all below 0.5
    best = best_threshold(y, scores, metric=metric, cost_fn=30.0)

    def value(t: float) -> float:
        pred = scores >= t
        if metric == "f1":
            return float(skm.f1_score(y, pred, zero_division=0))
        if metric == "accuracy":
            return float(skm.accuracy_score(y, pred))
        return -float((pred & ~y).sum() + 30.0 * (~pred & y).sum())

    assert value(best) == pytest.approx(max(value(t) for t in np.unique(scores)))
    if metric == "f1":
        assert best < 0.5 and at_threshold(y, scores, best)["recall"] > at_threshold(y, scores, 0.5)["recall"] == 0.0
