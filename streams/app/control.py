"""The control flow: deployment records from ``{ns}.models`` applied between two batches, without a restart.

Each worker reads the whole control topic (see
:mod:`driftline.streams.kafka.control`); a deployment that cannot load is
refused with a critical ``model_load_failed`` alert and what served before
keeps serving; a control record that is not a deployment raises a
``bad_control_record`` alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import faust

from driftline.inference.deployment import Deployment, live_variants
from driftline.inference.errors import ModelError
from driftline.streams.app.context import WorkerContext
from driftline.streams.app.rollout import bad_control_alert, load_failed_alert, loader_from, refused_version
from driftline.streams.app.score import build_folder
from driftline.streams.core.events import Alert, encode_event
from driftline.streams.core.pipeline import ServedModel
from driftline.streams.errors import ConfigError
from driftline.streams.kafka.control import ControlFollower
from driftline.streams.metrics import Metrics

log = logging.getLogger(__name__)


def publish_deployment(metrics: Metrics, served: ServedModel) -> None:
    """What serves a model, by variant and execution provider, as a metric."""
    dep = served.deployment
    live = [(ver, var, served.versions[ver].active_provider or "none")
            for var, ver in live_variants(dep)]
    metrics.set_deployment(dep.model, live)


def add_control_flow(app: faust.App, ctx: WorkerContext, follower: ControlFollower, refused: list[Alert]) -> None:
    """Follow the control topic (read to its end by ``follower`` already); ``refused``: alerts from start-up."""
    settings, metrics = ctx.settings, ctx.metrics
    alert_schema = ctx.catalog.latest("driftline.Alert")
    alerts = app.topic(settings.topic("alerts"), key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=settings.partitions.alerts)
    loader = loader_from(settings)
    by_model = {s.model.name: s for s in ctx.pipeline.served.values()}
    control_thread = ThreadPoolExecutor(1, thread_name_prefix="driftline-control")

    async def send_alert(alert: Alert) -> None:
        await alerts.send(key=alert.model.encode(), value=encode_event(alert_schema, alert))

    async def refuse(model: str, version: str, reason: str) -> None:
        rec = load_failed_alert(model, version, reason, int(time.time() * 1000))
        log.error("alert critical model_load_failed: %s %s", model, rec.message,
                  extra={"event": "deployment_refused", "model": model, "version": version, "kind": rec.kind,
                         "severity": rec.severity, **follower.audit.get(model, {})})
        metrics.deployment_changes.labels(model, "refused").inc()
        metrics.alerts.labels(model, "model_load_failed", "critical").inc()
        ctx.recent.add_alert(rec)
        await send_alert(rec)

    async def apply(dep: Deployment) -> None:
        """Load what ``dep`` needs off the event loop, then switch between two batches."""
        served = by_model.get(dep.model)
        if served is None:
            log.info("deployment of %s ignored: this worker does not serve it", dep.model)
            return
        if dep == served.deployment:
            return
        loop = asyncio.get_running_loop()
        try:
            models = await loop.run_in_executor(control_thread, loader.prepare, dep, served.versions)
            champion_before = served.deployment.champion
            unused = served.deploy(dep, models)  # no await between here and the end: atomic for the score task
        except (ModelError, ConfigError) as exc:
            await refuse(dep.model, refused_version(exc, dep), str(exc))
            return
        for m in unused:
            m.unload()
        if dep.champion != champion_before:
            folder = build_folder(settings, served.model, ctx.contributor)
            ctx.sink.send(ctx.sketch_records(served.set_folder(folder)), [])
        publish_deployment(metrics, served)
        metrics.deployment_changes.labels(dep.model, "applied").inc()
        log.info("deployment applied: %s", dep.describe(),
                 extra={"event": "deployment_applied", "model": dep.model, "version": dep.champion,
                        **follower.audit.get(dep.model, {})})

    async def report_skipped() -> None:
        counts, kept = follower.skips.drain()
        for (topic, reason), n in counts.items():
            metrics.skipped.labels(topic, reason).inc(n)
        for skipped in kept:
            rec = bad_control_alert(skipped, by_model, int(time.time() * 1000))
            log.error("alert critical bad_control_record: %s", rec.message,
                      extra={"event": "control_record_refused", "model": rec.model, "kind": rec.kind,
                             "severity": rec.severity, "reason": skipped.skip.reason})
            metrics.alerts.labels(rec.model, "bad_control_record", "critical").inc()
            ctx.recent.add_alert(rec)
            await send_alert(rec)

    @app.task
    async def follow_control() -> None:
        """Deployment records (last one per model wins), applied between batches without a restart.

        Control records that are not deployments were skipped by the follower,
        at start or since: each is counted and raises a critical
        bad_control_record alert, and what served before keeps serving.
        """
        for rec in refused:  # refused at start (before serving): counted like any other, so the rule pages
            metrics.alerts.labels(rec.model, rec.kind, rec.severity).inc()
            await send_alert(rec)
        loop = asyncio.get_running_loop()
        try:
            await report_skipped()
            while not app.should_stop:
                for dep in await loop.run_in_executor(control_thread, follower.poll, 0.5):
                    await apply(dep)
                await report_skipped()
        finally:
            control_thread.submit(follower.close)
            control_thread.shutdown(wait=False)
