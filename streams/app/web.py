"""The web flow: ``/metrics``, ``/healthz``, ``/readyz``, the dashboard and ``/api/recent``.

Liveness says whether the worker's loops run, its Kafka clients are usable
and its score path has not been stalled for long while the broker answers (a
supervisor restarts it when not); readiness whether it can take traffic now
(broker reachable, models loaded, score path not stalled).
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import faust
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from driftline.streams.app.context import WorkerContext
from driftline.streams.core.observe import liveness

PROBE_EVERY_S = 3.0  # at most one broker metadata request per this many seconds, however often /readyz is asked


@functools.cache
def dashboard_html() -> str:
    """The dashboard page: one self-contained file (no CDN), read once."""
    return (Path(__file__).parent / "static" / "dashboard.html").read_text()


def add_web_pages(app: faust.App, ctx: WorkerContext) -> None:
    @app.page("/metrics")
    async def metrics_page(_self: Any, request: Any) -> Any:
        return _self.bytes(generate_latest(ctx.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(_self: Any, request: Any) -> Any:
        """200 while the loops run, the Kafka clients are usable and the score path is not stalled for long; else 503.

        "For long": ``LIVENESS_STALLS`` x ``stall_s`` while the broker answers (the consumer's last word on it and
        /readyz's last probe: nothing here waits on the broker, so the probe answers at once during an outage).
        """
        client = ctx.client_problem()
        problems = liveness(ctx.liveness, ctx.progress, time.time(),
                            broker_problem=client or ctx.source.broker_down or ctx.probe["problem"])
        if client is not None:
            problems["kafka"] = client
        if problems:
            return _self.json({"status": "dead", "problems": problems}, status=503)
        return _self.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(_self: Any, request: Any) -> Any:
        """200 when the broker answers, every model is loaded and the score path is not stalled; else 503."""
        if time.monotonic() - ctx.probe["at"] > PROBE_EVERY_S:
            loop = asyncio.get_running_loop()
            ctx.probe["problem"] = await loop.run_in_executor(None, ctx.source.reachable)
            recheck = getattr(ctx.catalog.source, "recheck", None)
            if recheck is not None:  # a registry that failed a lookup: is it back?
                await loop.run_in_executor(None, recheck)
            ctx.probe["at"] = time.monotonic()
        ok, checks = ctx.ready()
        ctx.metrics.ready.set(1.0 if ok else 0.0)
        return _self.json({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)

    @app.page("/")
    async def dashboard(_self: Any, request: Any) -> Any:
        return _self.html(dashboard_html())

    @app.page("/api/recent")
    async def recent_page(_self: Any, request: Any) -> Any:
        return _self.json(ctx.recent.to_dict())
