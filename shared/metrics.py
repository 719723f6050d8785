"""Prometheus metrics: one registry per app, served at ``/metrics``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared import keys


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[keys.REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def new_registry() -> CollectorRegistry:
    """A registry of the app's own (no process-global default registry: tests build many apps)."""
    return CollectorRegistry(auto_describe=True)
