"""Drift statistics against scipy, mergeable sketches, calibration and detection delay."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from driftline.detectors.evaluate import evaluate
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.profile import CategoricalReference, NumericReference, ReferenceProfile
from driftline.detectors.sketch import WindowSketch, fold_numeric
from driftline.detectors.stats import chi2_counts, chi2_isf, chi2_sf, kolmogorov_sf, ks_counts, psi, psi_threshold

CATS = ("a", "b", "c", "d", "e")
CAT_P = np.array([0.4, 0.3, 0.15, 0.1, 0.05])


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "normal": rng.normal(shift, 1.0, n),
        "skewed": rng.lognormal(0.0, 0.8, n),
        "count": rng.poisson(3.0, n).astype(np.float64),
        "cat": rng.choice(np.array(CATS, dtype=object), n, p=CAT_P),
    }


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(42)
    ref = draw(rng, 50_000)
    return ReferenceProfile(
        (NumericReference.build("normal", ref["normal"]), NumericReference.build("skewed", ref["skewed"]),
         NumericReference.build("count", ref["count"]), CategoricalReference.build("cat", ref["cat"], CATS)),
        NumericReference.build("score", rng.beta(2, 5, 50_000)),
    )


def sketch_of(profile: ReferenceProfile, data: dict[str, np.ndarray], scores: np.ndarray) -> WindowSketch:
    s = WindowSketch.empty(profile, "m", "1", 0, 60_000)
    s.fold(profile, data, {}, scores, messages=len(scores), dead_letters=0)
    return s


# -- statistics against reference implementations -------------------------------------


def test_chi2_distribution_matches_scipy() -> None:
    for dof in (1, 2, 5, 9, 30, 255):
        for x in (0.01, 0.5, dof * 0.7, dof, dof * 1.5 + 3, dof * 4.0 + 20):
            assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)
        assert chi2_isf(0.01, dof) == pytest.approx(stats.chi2.isf(0.01, dof), rel=1e-6)


def test_kolmogorov_matches_scipy() -> None:
    for x in (0.25, 0.5, 0.8, 1.0, 1.36, 1.63, 2.0, 3.0):
        assert kolmogorov_sf(x) == pytest.approx(special.kolmogorov(x), rel=1e-9, abs=1e-15)
    from driftline.detectors.stats import kolmogorov_isf, normal_isf

    for p in (0.05, 0.01, 1e-4):
        assert kolmogorov_isf(p) == pytest.approx(stats.kstwobign.isf(p), rel=1e-9)
        assert normal_isf(p) == pytest.approx(stats.norm.isf(p), rel=1e-9)


def test_chi2_counts_matches_scipy_contingency_test(rng: np.random.Generator) -> None:
    ref = np.array([400, 300, 150, 100, 50, 0])
    cur = np.bincount(rng.choice(6, 700, p=[0.35, 0.3, 0.2, 0.1, 0.04, 0.01]), minlength=6)
    stat, p = chi2_counts(ref, cur, min_expected=0)
    want = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert stat == pytest.approx(want.statistic) and p == pytest.approx(want.pvalue)
    # by default levels expecting fewer than 5 counts pool: here the unseen last one with the next rarest
    pooled = np.vstack([[*ref[:4], ref[4] + ref[5]], [*cur[:4], cur[4] + cur[5]]])
    assert stats.contingency.expected_freq(np.vstack([ref, cur]))[:, 5].min() < 5
    want = stats.chi2_contingency(pooled, correction=False)
    assert chi2_counts(ref, cur) == pytest.approx((want.statistic, want.pvalue))
    # and against scipy.stats.chisquare when the reference is much larger than the window
    big = ref[:5] * 1000
    small = cur[:5]
    approx = stats.chisquare(small, big / big.sum() * small.sum())
    assert chi2_counts(big, small)[0] == pytest.approx(approx.statistic, rel=0.01)


def test_psi_matches_direct_computation(rng: np.random.Generator) -> None:
    ref, cur = rng.integers(50, 500, 10), rng.integers(50, 500, 10)
    p, q = ref / ref.sum(), cur / cur.sum()
    assert psi(ref, cur) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi(ref, ref * 3) == pytest.approx(0.0)


def test_ks_from_fine_bins_matches_scipy_within_the_binning_error(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(7)
    ref_values = np.random.default_rng(42).normal(0.0, 1.0, 50_000)  # the profile's reference draw
    for shift, n in ((0.0, 1000), (0.1, 1000), (0.3, 5000), (0.0, 20000)):
        cur = rng.normal(shift, 1.0, n)
        ref = profile.features[0]
        assert isinstance(ref, NumericReference)
        d, p = ks_counts(ref.fine_counts, fold_numeric(ref, cur).fine)
        exact = stats.ks_2samp(cur, ref_values, method="asymp")
        assert exact.statistic - 1.0 / 256 - 1e-9 <= d <= exact.statistic + 1e-12
        assert p == pytest.approx(kolmogorov_sf(d * np.sqrt(n * 50_000 / (n + 50_000))))


# -- mergeable sketches -----------------------------------------------------------------


def test_merging_partitions_gives_the_whole_window(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(3)
    data = draw(rng, 8000, shift=0.2)
    scores = rng.beta(2, 5, 8000)
    whole = sketch_of(profile, data, scores)
    part = rng.integers(0, 4, 8000)
    pieces = [sketch_of(profile, {k: v[part == i] for k, v in data.items()}, scores[part == i]) for i in range(4)]
    left = ((pieces[0] + pieces[1]) + pieces[2]) + pieces[3]
    right = pieces[3] + (pieces[2] + (pieces[1] + pieces[0]))
    for merged in (left, right):
        a, b = merged.to_dict(), whole.to_dict()
        for name in b["columns"]:
            for key in ("counts", "fine", "n", "nulls"):
                assert a["columns"][name][key] == b["columns"][name][key]
            assert a["columns"][name]["sum"] == pytest.approx(b["columns"][name]["sum"])
        got, want = evaluate(profile, merged, 0.01), evaluate(profile, whole, 0.01)
        assert [(r.column, r.kind) for r in got] == [(r.column, r.kind) for r in want]
        np.testing.assert_allclose([(r.value, r.p_value, r.psi) for r in got],
                                   [(r.value, r.p_value, r.psi) for r in want])


def test_sketch_round_trips_through_dicts(profile: ReferenceProfile) -> None:
    s = sketch_of(profile, draw(np.random.default_rng(1), 500), np.random.default_rng(2).random(500))
    assert WindowSketch.from_dict(s.to_dict()).to_dict() == s.to_dict()
    assert ReferenceProfile.from_json(profile.to_json()).to_json() == profile.to_json()


# -- calibration and detection ------------------------------------------------------------


@pytest.mark.parametrize(("window", "windows"), [(100, 1000), (100_000, 100)])
def test_false_alarm_rate_without_drift_is_at_most_alpha(profile: ReferenceProfile, window: int,
                                                         windows: int) -> None:
    """Seeded no-drift windows: the share flagged per column stays at the configured level.

    A measured rate carries sampling noise (±0.3 % for 1,000 windows), so
    the check is the statistical one: the flags over all columns must not be
    significantly more than ``alpha`` would give (one-sided binomial test at
    0.1 %), and no single column may be far above it.
    """
    alpha = 0.01
    rng = np.random.default_rng(window)
    flagged = {"normal": 0, "skewed": 0, "count": 0, "cat": 0, "__score__": 0}
    for _ in range(windows):
        results = evaluate(profile, sketch_of(profile, draw(rng, window), rng.beta(2, 5, window)), alpha)
        for r in results:
            if r.kind != "data_quality" and r.p_value < alpha:
                flagged[r.column] += 1
    trials = windows * len(flagged)
    pooled = sum(flagged.values())
    assert stats.binomtest(pooled, trials, alpha, alternative="greater").pvalue > 0.001, flagged
    assert pooled / trials <= alpha * 1.5, flagged
    assert all(stats.binomtest(v, windows, alpha, alternative="greater").pvalue > 0.001 for v in flagged.values())
    # The fixed "PSI > 0.1" rule this replaces fires on most small windows.
    small = sketch_of(profile, draw(rng, 100), rng.beta(2, 5, 100))
    assert sum(r.psi > 0.1 for r in evaluate(profile, small, alpha) if r.kind == "data_drift") >= 1
    assert psi_threshold(10, 100, 50_000, alpha) > 0.2 > psi_threshold(10, 100_000, 50_000, alpha)


def test_half_std_shift_is_detected_within_two_windows_on_that_feature_only(profile: ReferenceProfile) -> None:
    policy = AlertPolicy(PolicyConfig(alpha=0.01, k=2, m=3))
    rng = np.random.default_rng(11)
    for _ in range(10):  # calm first: no alert
        alerts, retrain = policy.update(evaluate(profile, sketch_of(profile, draw(rng, 1000), rng.beta(2, 5, 1000)),
                                                 0.01))
        assert alerts == [] and retrain is None
    fired_at = None
    for w in range(1, 6):
        data = draw(rng, 1000)
        data["normal"] = data["normal"] + 0.5
        alerts, _ = policy.update(evaluate(profile, sketch_of(profile, data, rng.beta(2, 5, 1000)), 0.01))
        assert {a.result.column for a in alerts} <= {"normal"}
        if alerts and fired_at is None:
            fired_at = w
    assert fired_at is not None and fired_at <= 2


def test_policy_state_survives_a_restart(profile: ReferenceProfile) -> None:
    cfg = PolicyConfig()
    rng = np.random.default_rng(5)
    a, b = AlertPolicy(cfg), AlertPolicy(cfg)
    windows = []
    for w in range(8):
        data = draw(rng, 1000, shift=1.0 if w >= 3 else 0.0)
        windows.append(evaluate(profile, sketch_of(profile, data, rng.beta(2, 5, 1000)), cfg.alpha))
    out_a = [a.update(r)[0] for r in windows]
    out_b = [b.update(r)[0] for r in windows[:4]]
    b = AlertPolicy.restore(b.snapshot(), cfg)
    out_b += [b.update(r)[0] for r in windows[4:]]
    assert [[x.result.column for x in w] for w in out_a] == [[x.result.column for x in w] for w in out_b]
    assert any(out_a)


def test_retrain_after_sustained_critical_drift(profile: ReferenceProfile) -> None:
    policy = AlertPolicy(PolicyConfig(retrain_features=2, retrain_windows=2))
    rng = np.random.default_rng(9)
    decisions = []
    for _ in range(4):
        data = draw(rng, 2000)
        data["normal"] += 1.0
        data["skewed"] *= 2.0
        decisions.append(policy.update(evaluate(profile, sketch_of(profile, data, rng.beta(2, 5, 2000)), 0.01))[1])
    requested = [d for d in decisions if d is not None]
    assert len(requested) == 1  # one open request per model until the cooldown passes
    assert "normal" in requested[0].reason and "skewed" in requested[0].reason


def test_policy_config_is_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        PolicyConfig(alpha=0)
    with pytest.raises(ValueError, match="k <= m"):
        PolicyConfig(k=4, m=3)


@pytest.mark.parametrize("kind", ["adwin", "kswin", "page_hinkley"])
def test_river_change_points_match_an_offline_run_over_the_same_signal(profile: ReferenceProfile, kind: str) -> None:
    from river import drift as river_drift

    from driftline.detectors.river_signal import make, signal

    policy = AlertPolicy(PolicyConfig(detector=kind))
    rng = np.random.default_rng(17)
    streamed, signals = [], []
    for w in range(60):
        data = draw(rng, 1000)
        if w >= 40:
            data["normal"] = data["normal"] + 0.5
        results = evaluate(profile, sketch_of(profile, data, rng.beta(2, 5, 1000)), 0.01)
        policy.update(results)
        signals.append(signal(next(r.p_value for r in results if r.column == "normal" and r.kind == "data_drift")))
        streamed.append(policy.detectors["data_drift:normal"].drift_detected)
    offline = make(kind)
    assert isinstance(offline, (river_drift.ADWIN, river_drift.KSWIN, river_drift.PageHinkley))
    changes = []
    for s in signals:
        offline.update(s)
        changes.append(offline.drift_detected)
    assert changes == streamed
    assert any(streamed[40:]), f"{kind} saw no change after the shift"
    assert not any(streamed[:40]), f"{kind} saw a change before the shift"


def test_personal_features_show_their_bins_by_number_only(profile: ReferenceProfile) -> None:
    """A drift result names bins by their values, except for a personal feature (no category, no edge shown)."""
    from dataclasses import replace

    rng = np.random.default_rng(7)
    data = draw(rng, 5_000, shift=1.0)
    data["cat"] = rng.choice(np.array(CATS, dtype=object), 5_000, p=CAT_P[::-1])
    scores = rng.beta(2, 5, 5_000)
    named = {r.column: r for r in evaluate(profile, sketch_of(profile, data, scores), 0.01) if r.kind == "data_drift"}
    hidden_profile = replace(profile, personal=frozenset({"cat", "normal"}))
    hidden = {r.column: r for r in evaluate(hidden_profile, sketch_of(hidden_profile, data, scores), 0.01)
              if r.kind == "data_drift"}
    assert {b for b, _, _ in named["cat"].top_bins} & set(CATS)  # the shifted categories, by name
    assert {b for b, _, _ in hidden["cat"].top_bins} <= {f"category {i}" for i in range(1, 6)} | {"(other)"}
    assert all(b.startswith("bin ") for b, _, _ in hidden["normal"].top_bins)
    assert hidden["skewed"].top_bins == named["skewed"].top_bins  # not personal: unchanged
    assert hidden["cat"].p_value == named["cat"].p_value  # the statistics do not change, only the names
