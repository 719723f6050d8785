"""``/healthz`` (the process runs) and ``/readyz`` (its backends answer) for every service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from shared import keys
from shared.metrics import SCRAPE_HOOKS, add_scrape_hook, metrics_view, new_registry
from shared.resources import amqp_connected

log = logging.getLogger(__name__)

Check = Callable[[web.Application], Awaitable[None]]
READY_CHECKS: web.AppKey[dict[str, Check]] = web.AppKey("ready_checks")
_CHECK_TIMEOUT = 2.0


class NotReady(Exception):
    """A check's own reason, shown as it is in /readyz (never a secret: a file and line)."""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[keys.SERVICE_NAME]})


async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READY_CHECKS]
    results = await asyncio.gather(*(_run(c, request.app) for c in checks.values()))
    status = dict(zip(checks, results, strict=True))
    ok = all(r == "ok" for r in results)
    body = {
        "status": "ok" if ok else "unavailable",
        "service": request.app[keys.SERVICE_NAME],
        "checks": status,
    }
    return web.json_response(body, status=200 if ok else 503)


async def _run(check: Check, app: web.Application) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            await check(app)
    except NotReady as exc:
        return f"error: {exc}"
    except Exception as exc:  # any failure means "not ready", whatever its kind
        return f"error: {exc.__class__.__name__}"
    return "ok"


async def check_redis(app: web.Application) -> None:
    await app[keys.REDIS].ping()


async def check_amqp(app: web.Application) -> None:
    if not amqp_connected(app[keys.AMQP]):
        raise ConnectionError("AMQP connection down")


async def check_mongo(app: web.Application) -> None:
    await app[keys.MONGO_CLIENT].admin.command("ping")


def service_app(name: str, **options: Any) -> web.Application:
    """A service's application: named (readiness answers say which service), with its own
    metrics registry under ``keys.REGISTRY``; ``options`` go to ``web.Application``."""
    app = web.Application(**options)
    app[keys.SERVICE_NAME] = name
    app[keys.REGISTRY] = new_registry()
    return app


def metrics_listener(host: str, port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context serving the app's ``/metrics``, and nothing else, on ``port``.

    The monitoring system needs the metrics of every service, not its endpoints: on the
    ingest's own port it could reach ``/start_uploads`` as well, and from a trusted proxy's
    address claim any device certificate. A port of its own lets a network policy admit
    the monitoring namespace to the metrics only (deploy/k8s)."""

    async def serve_metrics(app: web.Application) -> AsyncIterator[None]:
        metrics = web.Application()
        metrics[keys.REGISTRY] = app[keys.REGISTRY]
        metrics[SCRAPE_HOOKS] = app.get(SCRAPE_HOOKS, [])
        metrics.router.add_get("/metrics", metrics_view)
        runner = web.AppRunner(metrics, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            log.info("metrics on %s:%d", host, port)
            yield
        finally:
            await runner.cleanup()

    return serve_metrics


def add_health_routes(app: web.Application, checks: dict[str, Check]) -> None:
    """Register /healthz, /readyz and /metrics on ``app``; every scrape of the metrics runs
    the readiness checks too, into ``carve_check_up{check}`` (1: passed, 0: failed), so an
    alert sees a backend down from every service that uses it (shared.metrics)."""
    app[READY_CHECKS] = checks
    up = Gauge(
        "carve_check_up",
        "1 when the /readyz check passed at this scrape, 0 when it failed (backend down)",
        ["check"],
        registry=app[keys.REGISTRY],
    )

    async def refresh() -> None:
        results = await asyncio.gather(*(_run(c, app) for c in checks.values()))
        for name, result in zip(checks, results, strict=True):
            up.labels(name).set(1 if result == "ok" else 0)

    add_scrape_hook(app, refresh)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
