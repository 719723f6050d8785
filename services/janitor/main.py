"""The janitor app factory: the sweep loop inside the aiohttp lifecycle (or one sweep, --once)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from services.janitor import keys
from services.janitor.metrics import JanitorMetrics
from services.janitor.settings import JanitorSettings
from services.janitor.sweep import Clock, Janitor, Report, utc_now
from shared import keys as shared_keys
from shared.crypto.context import KEYRING, keyring_ctx, transit_checks
from shared.errors import Unavailable
from shared.events.relay import RELAY, events_ctx
from shared.finalize import Finalizer
from shared.health import Check, add_health_routes, check_mongo, check_redis, service_app
from shared.resources import CleanupCtx, mongo_ctx, redis_ctx
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


async def run_sweep(app: web.Application, *, dry_run: bool = False) -> Report:
    """One sweep with its metrics and its summary log line."""
    metrics = app[keys.METRICS]
    try:
        report = await app[keys.JANITOR].sweep(dry_run=dry_run)
    except Unavailable as exc:
        metrics.sweeps.labels("error").inc()
        log.warning("janitor sweep interrupted, the next one resumes: %s", exc)
        raise
    summary = report.as_dict()
    if report.skipped:
        metrics.sweeps.labels("skipped").inc()
    elif not dry_run:
        app[keys.HEALTH].last_success = time.monotonic()
        metrics.sweeps.labels("done").inc()
        metrics.duration.observe(report.seconds)
        metrics.last_success.set(time.time())
        for action, count in report.actions.items():
            metrics.actions.labels(action).inc(count)
        metrics.bytes_freed.inc(report.bytes_freed)
    log.info("janitor sweep %s", orjson.dumps(summary).decode())
    return report


async def _loop(app: web.Application) -> None:
    interval = app[keys.SETTINGS].janitor_interval
    while True:
        try:
            await run_sweep(app)
        except Unavailable:
            pass  # logged by run_sweep; the next sweep resumes
        except Exception:
            # Never let one bad sweep end the loop: /readyz reports a janitor that stops
            # succeeding (check_sweeping), this keeps it trying.
            app[keys.METRICS].sweeps.labels("error").inc()
            log.exception("janitor sweep failed; the next one resumes")
        await asyncio.sleep(interval)


async def check_sweeping(app: web.Application) -> None:
    """Not ready when no sweep has succeeded for three intervals (plus one lease)."""
    settings = app[keys.SETTINGS]
    last = app[keys.HEALTH].last_success
    allowed = 3 * settings.janitor_interval + settings.janitor_lease
    if time.monotonic() - last > allowed:
        raise RuntimeError(f"no successful sweep for {time.monotonic() - last:.0f} s")


def _janitor_ctx(clock: Clock, *, loop: bool) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        db = app[shared_keys.MONGO_DB]
        finalizer = Finalizer(
            db,
            settings.mongo_bucket,
            owner=f"janitor:{socket.gethostname()}:{os.getpid()}",
            lease_seconds=settings.finalize_lease,
            events=app[RELAY],
            keys=app[KEYRING],
        )
        app[keys.JANITOR] = Janitor(
            db,
            app[shared_keys.REDIS],
            settings,
            finalizer,
            clock=clock,
            events=app[RELAY],
            keyring=app[KEYRING],
        )
        task = asyncio.create_task(_loop(app), name="janitor") if loop else None
        try:
            yield
        finally:
            await cancel_and_wait(task)

    return ctx


def create_app(
    settings: JanitorSettings, *, loop: bool = True, clock: Clock = utc_now
) -> web.Application:
    """The janitor: with ``loop`` it sweeps every CARVE_JANITOR_INTERVAL while serving health."""
    app = service_app("carve-janitor")
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = JanitorMetrics.create(app[shared_keys.REGISTRY])
    app[keys.HEALTH] = keys.SweepHealth(time.monotonic())
    app.cleanup_ctx.extend(
        [
            redis_ctx(settings),
            mongo_ctx(settings),
            events_ctx(settings, settings),
            keyring_ctx(settings),
            _janitor_ctx(clock, loop=loop),
        ]
    )
    checks: dict[str, Check] = {
        "redis": check_redis,
        "mongodb": check_mongo,
        **transit_checks(settings),
    }
    if loop:
        checks["sweeps"] = check_sweeping
    add_health_routes(app, checks)
    return app
