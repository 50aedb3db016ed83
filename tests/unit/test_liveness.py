"""Liveness without a broker: /healthz fails on an ended loop, or on a stall far longer than readiness tolerates.

The rule (streams/core/observe.py ``liveness``) is what ``/healthz`` answers
from; deploy/k8s points the liveness probe at it (tests/unit/test_production_files.py).
"""

from __future__ import annotations

from driftline.streams.core.observe import LIVENESS_STALLS, Liveness, Progress, liveness, readiness

UP = None  # the broker answers


def test_a_stall_that_outlasts_the_bound_is_a_liveness_failure_readiness_fails_first() -> None:
    loops = Liveness()
    loops.started("score")
    loops.started("acknowledge")
    p = Progress(started_s=1000.0, stall_s=60.0)
    p.batch_done(1000.0)
    p.lag = 500
    bound = 60.0 * LIVENESS_STALLS
    assert LIVENESS_STALLS > 1
    ready, checks = readiness(p, 1061.0, broker_problem=None, models_ready={"fraud": True})
    assert not ready and checks["progress"].startswith("stalled")
    assert liveness(loops, p, 1061.0, broker_problem=UP) == {}  # out of rotation, not restarted yet
    assert liveness(loops, p, 1000.0 + bound - 1, broker_problem=UP) == {}
    problems = liveness(loops, p, 1000.0 + bound + 1, broker_problem=UP)
    assert set(problems) == {"progress"}
    assert problems["progress"].startswith("stalled: 500 records behind and 0 fetched")
    assert f"liveness limit {bound:g}s" in problems["progress"]
    # Fetched and never scored (a hung score agent, nothing behind on the partitions): the same.
    p.lag, p.backlog = 0, 300
    assert "300 fetched" in liveness(loops, p, 1000.0 + bound + 1, broker_problem=UP)["progress"]


def test_a_broker_outage_or_a_quiet_topic_is_never_a_restart() -> None:
    loops = Liveness()
    loops.started("score")
    p = Progress(started_s=0.0, stall_s=60.0)
    assert liveness(loops, p, 10 * 86_400.0, broker_problem=UP) == {}  # no lag, nothing fetched: idle, alive
    p.lag = 1_000
    long_after = 60.0 * LIVENESS_STALLS * 10
    assert liveness(loops, p, long_after, broker_problem="broker unreachable: timed out") == {}
    assert "progress" in liveness(loops, p, long_after, broker_problem=UP)  # the broker is back, still stuck
    p.batch_done(long_after)  # it moves again
    assert liveness(loops, p, long_after + 1, broker_problem=UP) == {}


def test_a_loop_that_ended_fails_liveness_whatever_the_progress() -> None:
    loops = Liveness()
    loops.started("score")
    loops.stopped("score", "the score loop has ended")
    p = Progress(started_s=0.0, stall_s=60.0)
    assert liveness(loops, p, 1.0, broker_problem="broker unreachable") == {"score": "the score loop has ended"}
    loops.started("score")  # restarted in-process: alive again
    assert liveness(loops, p, 2.0, broker_problem=UP) == {}


def test_settle_heap_freezes_start_up_and_raises_the_thresholds() -> None:
    import gc

    from driftline.streams.app.context import GC_THRESHOLDS, settle_heap

    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # start-up's objects: never scanned again
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
