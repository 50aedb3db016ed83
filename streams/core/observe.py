"""What the worker's web pages show besides ``/metrics``: readiness and the recent drift windows and alerts.

Readiness and liveness are pure functions of what the worker last saw (clock
passed in), so the rules "lag and no progress for ``stall_s`` means stalled"
(not ready) and "stalled ``LIVENESS_STALLS`` times as long while the broker
answers" (not alive: restart it) are tested without a broker; the worker only
feeds them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from driftline.streams.core.drift import ClosedWindow, column_label
from driftline.streams.core.events import Alert


@dataclass
class Progress:
    """When the score path last finished a batch, and what it had left to do."""

    started_s: float
    stall_s: float
    last_batch_s: float | None = None
    backlog: int = 0  # records fetched but not yet scored (batches waiting for the agent)
    lag: int = 0  # records behind on the assigned partitions

    def batch_done(self, now_s: float) -> None:
        self.last_batch_s = now_s

    def stalled(self, now_s: float, after_s: float | None = None) -> str | None:
        """Why the worker is stalled, or None: work is waiting and nothing finished for ``stall_s``.

        An idle worker (no lag, nothing fetched) is never stalled, however long
        since its last batch: a quiet topic is not a failure. ``after_s``: a
        longer bound than ``stall_s`` (liveness).
        """
        if self.lag <= 0 and self.backlog <= 0:
            return None
        since = self.last_batch_s if self.last_batch_s is not None else self.started_s
        idle = now_s - since
        bound = self.stall_s if after_s is None else after_s
        if idle < bound:
            return None
        limit = f"stall_s={self.stall_s:g}" if after_s is None else f"liveness limit {bound:g}s"
        return (f"stalled: {self.lag} records behind and {self.backlog} fetched, "
                f"but no batch finished for {idle:.0f}s ({limit})")


def readiness(progress: Progress, now_s: float, *, broker_problem: str | None, models_ready: dict[str, bool],
              schema_registry: str | None = None) -> tuple[bool, dict[str, str]]:
    """(ready, check → "ok" or the reason) for ``/readyz``; ``schema_registry`` only where one is configured."""
    checks = {"broker": broker_problem or "ok"}
    if schema_registry is not None:
        checks["schema_registry"] = schema_registry
    for name, ok in models_ready.items():
        checks[f"model:{name}"] = "ok" if ok else "not loaded"
    checks["progress"] = progress.stalled(now_s) or "ok"
    return all(v == "ok" for v in checks.values()), checks


@dataclass
class Liveness:
    """The worker's long-running loops: ``/healthz`` fails once one of them has ended (see :func:`liveness`)."""

    running: set[str] = field(default_factory=set)
    ended: dict[str, str] = field(default_factory=dict)

    def started(self, name: str) -> None:
        self.running.add(name)
        self.ended.pop(name, None)

    def stopped(self, name: str, why: str) -> None:
        self.running.discard(name)
        self.ended[name] = why

    def problems(self) -> dict[str, str]:
        return dict(self.ended)


#: ``/healthz`` fails once a stall has lasted this many ``stall_s`` (``/readyz`` fails after one): long enough
#: that a slow batch is not a restart, short enough that a hung worker does not hold its partitions for long.
LIVENESS_STALLS = 5


def liveness(loops: Liveness, progress: Progress, now_s: float, *, broker_problem: str | None) -> dict[str, str]:
    """``/healthz``'s problems (none: alive): a loop that has ended, or a stall of ``LIVENESS_STALLS`` x ``stall_s``.

    A stall counts only while the broker answers (``broker_problem`` None): a
    broker outage stalls every worker, and restarting them cures none.
    """
    problems = loops.problems()
    stalled = progress.stalled(now_s, after_s=progress.stall_s * LIVENESS_STALLS)
    if stalled is not None and broker_problem is None:
        problems["progress"] = stalled
    return problems


@dataclass
class Recent:
    """The last drift windows (for the dashboard's heat map) and the last alerts, newest last."""

    windows: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=60))
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))

    def add_window(self, closed: ClosedWindow) -> None:
        s = closed.sketch
        self.windows.append({
            "model": s.model, "version": s.version, "start": s.start_ms, "end": s.end_ms, "messages": s.messages,
            "columns": [{"feature": column_label(r.column),
                         "kind": r.kind, "statistic": r.statistic, "value": r.value, "threshold": r.threshold,
                         "p_value": r.p_value, "psi": r.psi, "n": r.n} for r in closed.results],
        })

    def add_alert(self, alert: Alert) -> None:
        keep = ("id", "model", "model_version", "kind", "severity", "feature", "statistic", "value", "threshold",
                "message", "created_at")
        self.alerts.append({k: getattr(alert, k) for k in keep})

    def to_dict(self) -> dict[str, Any]:
        return {"windows": list(self.windows), "alerts": list(self.alerts)}
