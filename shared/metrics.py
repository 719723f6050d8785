"""Prometheus metrics: one registry per app, served at ``/metrics``.

Most metrics move as the work happens. A few describe state that only a look at a backend
can tell (is MongoDB answering, how deep is a queue, how many carves are receiving): those
are refreshed by the app's scrape hooks, run just before each scrape, like an exporter's
``*_up`` metrics. Each hook is bounded by ``HOOK_TIMEOUT`` and a failing hook leaves its
gauges as they were (logged at debug level only: ``carve_check_up`` says what is down)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared import keys

log = logging.getLogger(__name__)

ScrapeHook = Callable[[], Awaitable[None]]
SCRAPE_HOOKS: web.AppKey[list[ScrapeHook]] = web.AppKey("scrape_hooks")
HOOK_TIMEOUT = 2.5


async def metrics_view(request: web.Request) -> web.Response:
    hooks = request.app.get(SCRAPE_HOOKS, [])
    if hooks:
        await asyncio.gather(*(_run(hook) for hook in hooks))
    body = generate_latest(request.app[keys.REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _run(hook: ScrapeHook) -> None:
    try:
        async with asyncio.timeout(HOOK_TIMEOUT):
            await hook()
    except Exception as exc:  # its gauges stay as they were; carve_check_up tells the outage
        log.debug("scrape hook %s failed: %r", getattr(hook, "__qualname__", hook), exc)


def add_scrape_hook(app: web.Application, hook: ScrapeHook) -> None:
    """Run ``hook`` before each scrape of ``app``'s metrics (on either metrics port)."""
    if SCRAPE_HOOKS not in app:
        app[SCRAPE_HOOKS] = []
    app[SCRAPE_HOOKS].append(hook)


def new_registry() -> CollectorRegistry:
    """A registry of the app's own (no process-global default registry: tests build many apps)."""
    return CollectorRegistry(auto_describe=True)
