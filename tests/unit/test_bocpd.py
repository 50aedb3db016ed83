"""Bayesian online change points: the posterior against a plain scipy implementation, and the detector against
River's and the trivial baselines on seeded piecewise streams with known change points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from driftline.detectors.bocpd import Bocpd, probit
from driftline.detectors.changepoints import Stream, evaluate, piecewise_stream, score
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.river_signal import SignalDetector, make, signal


def reference_posterior(xs: list[float], hazard: float, prior: tuple[float, float, float, float]) -> np.ndarray:
    """Adams and MacKay's run-length posterior after ``xs``, written out with scipy's Student t (no truncation)."""
    m0, k0, a0, b0 = prior
    r = np.array([1.0])
    mu, kappa, alpha, beta = (np.array([v]) for v in prior)
    for x in xs:
        pred = stats.t.pdf(x, df=2 * alpha, loc=mu, scale=np.sqrt(beta * (kappa + 1) / (alpha * kappa)))
        grown = r * pred * (1 - hazard)
        r = np.concatenate(([np.sum(r * pred * hazard)], grown))
        r /= r.sum()
        mu, kappa, alpha, beta = (np.concatenate(([m0], (kappa * mu + x) / (kappa + 1))),
                                  np.concatenate(([k0], kappa + 1)), np.concatenate(([a0], alpha + 0.5)),
                                  np.concatenate(([b0], beta + kappa * (x - mu) ** 2 / (2 * (kappa + 1)))))
    return r


def test_the_run_length_posterior_equals_a_scipy_implementation() -> None:
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.normal(0, 1, 25), rng.normal(2.5, 1, 15)])
    signals = [float(-np.log10(stats.norm.sf(v))) for v in z]
    d = Bocpd(hazard=0.02, max_run=1000)
    for s in signals:
        d.update(s)
    want = reference_posterior([probit(s) for s in signals], 0.02, d.prior)
    assert np.allclose(np.exp(d._log_r), want, rtol=1e-9, atol=1e-12)
    assert [probit(s) for s in signals] == pytest.approx(np.maximum(z, -2.0).tolist(), abs=1e-6)  # undoes -log10 p
    assert d.run_length() == pytest.approx(15, abs=3)  # the shift 15 windows ago


def test_truncating_long_runs_changes_nothing_that_matters() -> None:
    rng = np.random.default_rng(5)
    stream = piecewise_stream(rng, windows=800)
    short = Bocpd(max_run=60)
    full = Bocpd(max_run=2000)
    fired_short, fired_full = [], []
    for v in stream.signal.tolist():
        short.update(v)
        full.update(v)
        fired_short.append(short.drift_detected)
        fired_full.append(full.drift_detected)
    assert fired_short == fired_full


STREAMS = 12


@pytest.fixture(scope="module")
def scores() -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(20261202)  # not the seeds the defaults were chosen on
    streams = [piecewise_stream(rng) for _ in range(STREAMS)]
    return evaluate({kind: (lambda kind=kind: make(kind)) for kind in ("bocpd", "adwin", "kswin", "page_hinkley")},
                    streams)


def test_bocpd_finds_changes_that_river_and_the_baselines_miss(scores: dict) -> None:  # type: ignore[type-arg]
    b = scores["bocpd"]
    assert b.changes >= 8 * STREAMS  # enough changes to tell detectors apart
    assert b.precision >= 0.8 and b.recall >= 0.6 and b.f1 >= 0.7, (b.precision, b.recall, b.f1)
    assert np.median(b.delays) <= 3
    for other in ("adwin", "kswin", "page_hinkley", "never fires", "always fires"):
        assert b.f1 > scores[other].f1 + 0.2, (other, scores[other].f1)


def test_bocpd_rarely_fires_without_change() -> None:
    """Under no drift the probit signal is exactly N(0, 1): at most 1 false change per 1,000 windows."""
    rng = np.random.default_rng(11)
    calm = [piecewise_stream(rng, windows=2_000, stretch=(10**6, 10**6)) for _ in range(10)]
    assert all(not s.changes for s in calm)
    fired = evaluate({"bocpd": Bocpd}, calm)["bocpd"].detections
    assert fired <= 20, f"{fired} false changes in 20,000 calm windows"


def test_score_matches_within_the_margin_once_per_change() -> None:
    s = score([10, 50], [9, 12, 13, 56, 80], margin=5)
    assert (s.true_positives, s.detections, s.changes, s.delays) == (1, 5, 2, (2,))
    assert s.precision == pytest.approx(0.2) and s.recall == pytest.approx(0.5)
    assert score([10], [], 5).f1 == 0.0 and Stream(np.zeros(3), ()).changes == ()


def test_the_policy_runs_bocpd_and_restores_it_by_replay() -> None:
    assert "bocpd" in PolicyConfig(detector="bocpd").detector
    d = SignalDetector("bocpd")
    rng = np.random.default_rng(2)
    values = [signal(float(stats.norm.sf(v))) for v in np.concatenate([rng.normal(0, 1, 40), rng.normal(3, 1, 10)])]
    fired = [d.update(v) for v in values]
    restored = SignalDetector.restore(d.snapshot())
    assert any(fired[40:]) and not any(fired[:40])
    assert [restored.update(v) for v in values[-5:]] == [d.update(v) for v in values[-5:]]
    AlertPolicy(PolicyConfig(detector="bocpd"))  # accepted by the policy like River's


def test_a_p_value_of_one_is_not_a_change_and_replay_is_bounded() -> None:
    """Discrete one-sided tests return p = 1 exactly; z is clipped at -3.5, so that is no outlier. A snapshot's
    history longer than a detector keeps is replayed from its end only."""
    from driftline.detectors.river_signal import HISTORY

    rng = np.random.default_rng(12)
    fired = {"with p = 1": 0, "without": 0}
    for _ in range(100):
        calm = [signal(float(stats.norm.sf(v))) for v in rng.normal(size=40)]
        for name, values in (("without", calm), ("with p = 1", [*calm[:20], 0.0, *calm[21:]])):
            d = Bocpd()
            for v in values:
                d.update(v)
                fired[name] += d.drift_detected
    assert fired["with p = 1"] <= fired["without"] + 3, fired
    long = {"kind": "bocpd", "history": [0.3] * (HISTORY * 20)}
    assert len(SignalDetector.restore(long).history) == HISTORY
