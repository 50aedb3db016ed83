"""Multivariate drift: a correlation that flips with unchanged marginals is caught where every univariate test
passes, and the reconstruction-error test keeps the false-alarm rate of the others."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.detectors.evaluate import evaluate
from driftline.detectors.multivariate import MULTIVARIATE, PcaReference
from driftline.detectors.policy import AlertPolicy, PolicyConfig
from driftline.detectors.profile import NumericReference, ReferenceProfile
from driftline.detectors.sketch import WindowSketch

ALPHA = 0.01


def draw(rng: np.random.Generator, n: int, rho: float) -> dict[str, np.ndarray]:
    """Two standard normals with correlation ``rho``, a third independent one (heavy-tailed)."""
    a = rng.normal(size=n)
    b = rho * a + np.sqrt(1 - rho**2) * rng.normal(size=n)
    return {"a": a, "b": b, "c": rng.standard_t(5, size=n)}


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    ref = draw(np.random.default_rng(1), 50_000, rho=0.8)
    pca = PcaReference.build(ref)
    assert pca is not None and pca.components.shape == (2, 3)  # 65 % of the variance takes two components here
    return ReferenceProfile(tuple(NumericReference.build(n, v) for n, v in ref.items()),
                            NumericReference.build("score", np.random.default_rng(2).beta(2, 5, 50_000)),
                            multivariate=pca)


def window(profile: ReferenceProfile, data: dict[str, np.ndarray], rng: np.random.Generator) -> WindowSketch:
    s = WindowSketch.empty(profile, "m", "1", 0, 60_000)
    n = len(data["a"])
    s.fold(profile, data, {}, rng.beta(2, 5, n), messages=n, dead_letters=0)
    return s


def test_a_flipped_correlation_is_caught_where_the_univariate_tests_pass(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(3)
    policy = AlertPolicy(PolicyConfig(alpha=ALPHA))
    alerted_at, univariate = None, []
    for w in range(6):
        results = evaluate(profile, window(profile, draw(rng, 2_000, rho=-0.8), rng), ALPHA)
        univariate += [r for r in results if r.kind == "data_drift" and r.p_value < ALPHA]
        alerts, _ = policy.update(results)
        if alerted_at is None and any(a.result.kind == "multivariate_drift" for a in alerts):
            alerted_at = w
    assert not univariate, [(r.column, r.p_value) for r in univariate]  # the marginals did not move
    assert alerted_at is not None and alerted_at <= 1, alerted_at  # within 2 windows (k = 2 of m = 3)


def flags_and_alerts(profile: ReferenceProfile, rows: int, windows: int) -> tuple[float, float, float]:
    """Over seeded undrifted windows: the multivariate test's raw flag rate, the highest raw flag rate of the
    univariate numeric tests in the same windows, and the multivariate alert rate after the default policy."""
    rng = np.random.default_rng(rows)
    policy = AlertPolicy(PolicyConfig(alpha=ALPHA))
    flags = {n: 0 for n in ("a", "b", "c", MULTIVARIATE)}
    alerts = 0
    for _ in range(windows):
        results = evaluate(profile, window(profile, draw(rng, rows, rho=0.8), rng), ALPHA)
        for r in results:
            if r.column in flags and r.kind in ("data_drift", "multivariate_drift"):
                flags[r.column] += r.p_value < ALPHA
        alerts += sum(a.result.kind == "multivariate_drift" for a in policy.update(results)[0])
    univariate = max(flags[n] for n in ("a", "b", "c")) / windows
    return flags[MULTIVARIATE] / windows, univariate, alerts / windows


def test_without_drift_it_flags_at_alpha_in_small_windows(profile: ReferenceProfile) -> None:
    """3,000 seeded undrifted 200-row windows: the raw flag rate is within [0.5, 1.5] × alpha (tells 1 % from 2 %)."""
    raw, _, alerts = flags_and_alerts(profile, 200, 3_000)
    assert 0.5 * ALPHA <= raw <= 1.5 * ALPHA, raw
    assert alerts <= ALPHA, alerts


def test_in_large_windows_it_is_no_more_liberal_than_the_univariate_tests(profile: ReferenceProfile) -> None:
    """2,000 seeded undrifted 5,000-row windows: the numeric two-sample test is somewhat liberal at this size (its
    raw rate here reaches 2 %); the multivariate test, the same test on the reconstruction errors, stays within
    what the univariate ones do, and the policy keeps its alerts under 1 % of windows."""
    raw, univariate, alerts = flags_and_alerts(profile, 5_000, 2_000)
    assert raw <= max(univariate, 1.5 * ALPHA) + 0.005 and raw <= 2.5 * ALPHA, (raw, univariate)
    assert alerts <= ALPHA, alerts


def test_rows_with_nulls_have_no_error_and_the_profile_round_trips(profile: ReferenceProfile) -> None:
    pca = profile.multivariate
    assert pca is not None
    centred = {n: np.array([pca.mean[i]]) for i, n in enumerate(pca.names)}
    assert pca.reconstruction_errors(centred, {})[0][0] == pytest.approx(0.0, abs=1e-9)  # the mean is on it
    data = {"a": np.array([0.0, np.nan, 1e300]), "b": np.array([0.0, 5.0, 0.0]), "c": np.array([0.0, 0.0, 0.0])}
    errors, incomplete = pca.reconstruction_errors(data, {"b": np.array([False, True, False])})
    assert incomplete.tolist() == [False, True, False] and np.isfinite(errors).all()  # huge, not inf
    back = ReferenceProfile.from_json(profile.to_json())
    assert back.multivariate is not None and np.allclose(back.multivariate.components, pca.components)
    assert [f.name for f in back.monitored] == ["a", "b", "c", MULTIVARIATE]
    assert PcaReference.build({"only": np.arange(10.0)}) is None  # one column has no joint distribution


def test_a_rising_null_rate_is_not_joint_drift(profile: ReferenceProfile) -> None:
    """30 % nulls in a correlated feature: the null-rate test's business, not a multivariate alert."""
    rng = np.random.default_rng(8)
    flagged = 0
    for _ in range(100):
        data = draw(rng, 2_000, rho=0.8)
        nulls = {"b": rng.random(2_000) < 0.3}
        s = WindowSketch.empty(profile, "m", "1", 0, 60_000)
        s.fold(profile, data, nulls, rng.beta(2, 5, 2_000), messages=2_000, dead_letters=0)
        assert s.columns[MULTIVARIATE].nulls == int(nulls["b"].sum())
        flagged += any(r.kind == "multivariate_drift" and r.p_value < ALPHA for r in evaluate(profile, s, ALPHA))
    assert flagged <= 5, flagged


def test_a_bad_multivariate_section_only_turns_the_multivariate_test_off(profile: ReferenceProfile) -> None:
    import json

    good = json.loads(profile.to_json())
    for change in ({"names": ["a", "nope"]}, {"names": ["a", "a", "b"]}, {"scale": [1.0, 0.0, 1.0]},
                   {"mean": [0.0]}, {"components": []}, {"components": [[1.0, 1.0, 1.0]]},
                   {"errors": {**good["multivariate"]["errors"], "name": "a"}}, {"names": 3}):
        broken = {**good, "multivariate": {**good["multivariate"], **change}}
        loaded = ReferenceProfile.from_json(json.dumps(broken))
        assert loaded.multivariate is None and len(loaded.features) == 3, change


def test_sketches_with_and_without_the_column_still_merge(profile: ReferenceProfile) -> None:
    """An upgrade: workers on a profile without components send no multivariate column; the agent's has one."""
    from dataclasses import replace

    from driftline.streams.core.drift import fits_profile

    rng = np.random.default_rng(4)
    old_profile = replace(profile, multivariate=None)
    old = window(old_profile, draw(rng, 500, rho=0.8), rng)
    new = window(profile, draw(rng, 500, rho=0.8), rng)
    fits_profile(old, profile)  # the missing column is added empty
    merged = old + new
    assert merged.columns[MULTIVARIATE].n == 500
    fits_profile(new, old_profile)  # and an unexpected one dropped
    assert MULTIVARIATE not in new.columns


def test_personal_features_leave_no_sum_in_the_multivariate_column(profile: ReferenceProfile) -> None:
    from dataclasses import replace

    rng = np.random.default_rng(6)
    hidden = replace(profile, personal=frozenset({"a"}))
    s = window(hidden, draw(rng, 1, rho=0.8), rng)
    assert s.columns[MULTIVARIATE].n == 1 and s.columns[MULTIVARIATE].total == 0.0
    assert window(profile, draw(rng, 1, rho=0.8), rng).columns[MULTIVARIATE].total > 0.0
