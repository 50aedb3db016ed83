"""The quality policy, no broker: one alert per incident; a restored policy decides as one that never stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftline.detectors.quality_policy import ClosedQuality, QualityPolicy

KEY = ("fraud", "1", "champion")


def stream(rng: np.random.Generator, accuracies: list[float], per: int) -> list[tuple[float, bool]]:
    """(score, truth) pairs: ``per`` events at each accuracy in turn (threshold 0.5)."""
    out = []
    for acc in accuracies:
        truth = rng.random(per) < 0.5
        right = rng.random(per) < acc
        scores = np.where(truth == right, 0.9, 0.1)
        out += list(zip(scores.tolist(), truth.tolist(), strict=True))
    return out


def run(policy: QualityPolicy, events: list[tuple[float, bool]]) -> list[ClosedQuality]:
    return [c for score, truth in events for c in policy.add(KEY, "classification", score, positive=truth)[0]]


def new() -> QualityPolicy:
    return QualityPolicy(window_labels=500, alpha=0.01, drop_min=0.05, concept_kind="adwin")


def test_one_alert_per_incident_and_a_new_one_after_recovery() -> None:
    events = stream(np.random.default_rng(1), [0.9, 0.9, 0.7, 0.7, 0.7, 0.9, 0.7], 500)
    closed = run(new(), events)
    assert len(closed) == 7
    drops = [i for i, c in enumerate(closed) if c.drop is not None]
    assert drops == [2, 6]  # the 3-window incident alerts once; after recovering, the next drop is new
    first = closed[2].drop
    assert first is not None and first.baseline > 0.85 and first.accuracy < 0.75 and first.p_value < 0.01


def test_incidents_that_flip_within_the_cooldown_are_reported_once() -> None:
    """The demo's case: windows of 500 labels every 1.25 s, accuracy flipping around the threshold.

    Without a cooldown every flip back to "dropped" is a new incident (the test above); with
    ``cooldown_ms`` of 600 s, one report for the whole run, and a new one once the cooldown is over.
    """
    accuracies = [0.9, 0.9] + [0.7, 0.9] * 10 + [0.7]
    events = stream(np.random.default_rng(4), accuracies, 500)

    def reports(cooldown_ms: int, step_ms: int) -> list[int]:
        policy = QualityPolicy(window_labels=500, alpha=0.01, drop_min=0.05, concept_kind="adwin",
                               cooldown_ms=cooldown_ms)
        closed = []
        for i, (score, truth) in enumerate(events):
            closed += policy.add(KEY, "classification", score, positive=truth, now_ms=(i // 500) * step_ms)[0]
        return [i for i, c in enumerate(closed) if c.drop is not None]

    assert len(reports(0, 1_250)) == 11  # every flip
    assert reports(600_000, 1_250) == [2]  # one incident for 28 s of flipping
    assert reports(600_000, 60_000) == [2, 12, 22]  # 10 minutes later the trouble is reported again


def test_a_restored_policy_decides_as_one_that_never_stopped() -> None:
    events = stream(np.random.default_rng(2), [0.9, 0.9, 0.72, 0.72, 0.9, 0.7], 500)
    whole = run(new(), events)
    cut = 1_250  # mid-window, after the baseline and before the drop
    first, second = new(), new()
    before = run(first, events[:cut])
    second.restore(json.loads(json.dumps(first.snapshot())))
    after = run(second, events[cut:])
    assert [(c.window.n, c.window.accuracy, c.drop) for c in before + after] == \
           [(c.window.n, c.window.accuracy, c.drop) for c in whole]
    assert any(c.drop is not None for c in after)


@pytest.mark.parametrize("garbage", [{}, {"format": 1}, {"format": 1, "windows": 5, "baseline": [], "open": []},
                                     {"format": 2, "windows": [], "baseline": [], "open": []},
                                     {"format": 3, "windows": [], "baseline": [], "open": [], "concept": []}])
def test_a_state_that_is_not_one_changes_nothing(garbage: dict) -> None:
    policy = new()
    run(policy, stream(np.random.default_rng(3), [0.9], 700))
    before = policy.snapshot()
    with pytest.raises(ValueError):
        policy.restore(garbage)
    assert policy.snapshot() == before
