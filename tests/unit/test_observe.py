"""Readiness rules without a broker: a quiet worker is ready, one with work and no progress is not."""

from __future__ import annotations

from driftline.streams.core.observe import Progress, readiness


def test_idle_is_not_stalled_but_lag_without_progress_is() -> None:
    p = Progress(started_s=1000.0, stall_s=60.0)
    assert p.stalled(5000.0) is None  # no lag, nothing fetched: a quiet topic
    p.lag = 10
    assert p.stalled(1059.0) is None  # not for long enough yet
    assert "10 records behind" in (p.stalled(1061.0) or "")
    p.batch_done(1100.0)
    assert p.stalled(1150.0) is None and p.stalled(1161.0) is not None  # measured from the last batch
    p.lag, p.backlog = 0, 200  # fetched but never scored (the agent hangs): stalled too
    assert "200 fetched" in (p.stalled(1200.0) or "")


def test_readiness_names_every_failing_check() -> None:
    p = Progress(started_s=0.0, stall_s=60.0)
    ok, checks = readiness(p, 10.0, broker_problem=None, models_ready={"fraud": True})
    assert ok and set(checks.values()) == {"ok"}
    ok, checks = readiness(p, 10.0, broker_problem="broker unreachable: timed out", models_ready={"fraud": False})
    assert not ok and checks["broker"].startswith("broker unreachable") and checks["model:fraud"] == "not loaded"
