"""The web flow: ``/metrics``, ``/healthz``, ``/readyz``, the dashboard and ``/api/recent``.

Liveness says whether the worker's loops run, its Kafka clients are usable
and its score path has not been stalled for long while the broker answers (a
supervisor restarts it when not); readiness whether it can take traffic now
(broker reachable, models loaded, score path not stalled).

With a web token, everything but the probes and the dashboard's own page
(which holds no data and asks for the token) answers 401 without it; the
check is an aiohttp middleware, so Faust's own views are covered too.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from driftline.streams.app.context import WorkerContext
from driftline.streams.core.observe import liveness
from driftline.streams.errors import ConfigError

PROBE_EVERY_S = 3.0  # at most one broker metadata request per this many seconds, however often /readyz is asked
#: answered without the token: the probes (they say nothing about the data) and the dashboard page (static HTML)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
#: Faust's own web views (router, tables, graph, stats, its metrics): driftline serves none of them
FAUST_VIEWS_OFF = {f"web_{name}_enabled": False for name in ("router", "tables", "graph", "stats", "metrics")}

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_middleware(token: str) -> Any:
    """401, with an empty body, for any path but :data:`OPEN_PATHS` without ``Authorization: Bearer <token>``."""
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # any bytes a client sends (aiohttp keeps undecodable ones as surrogates) compare, never raise
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                                                 expected):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="driftline"'})
        return await handler(request)

    return require_token


def web_options(host: str, token: str | None, cert: Path | None, key: Path | None, *,
                open_ok: bool = False) -> dict[str, Any]:
    """The Faust app's web settings: Faust's own views off, the token check, HTTPS where a certificate is given.

    Beyond loopback without a token, anyone who reaches the port reads the
    metrics and the dashboard's data: refused at start unless ``open_ok``
    (``web_open``: a network the operator trusts).
    """
    options: dict[str, Any] = dict(FAUST_VIEWS_OFF)
    if token is not None:
        options["web_application_options"] = {"middlewares": [token_middleware(token)]}
    elif host not in ("127.0.0.1", "::1", "localhost"):
        if not open_ok:
            raise ConfigError(f"the web server would listen on {host} without a token: set DRIFTLINE_WEB_TOKEN "
                              "(or DRIFTLINE_WEB_TOKEN_FILE), or DRIFTLINE_WEB_OPEN=true on a network you trust, "
                              "or DRIFTLINE_WEB_HOST=127.0.0.1")
        log.warning("the web server listens on %s without a token (web_open): anyone who reaches it reads /metrics "
                    "and the dashboard's data", host)
    if cert is not None and key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"web_tls_cert_file/web_tls_key_file: cannot load them ({exc}); give a PEM "
                              "certificate and its unencrypted key") from None
        options["web_ssl_context"] = context
    return options


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
            if recheck is not None:  # is a registry that failed back, and are our ids still its? Not awaited:
                loop.run_in_executor(None, recheck)  # the probe answers with what is known now
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
