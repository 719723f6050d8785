"""The ``carve-events`` app factory: each endpoint's queue and sender inside the aiohttp
lifecycle; the HTTP side serves /healthz, /readyz and /metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.events import keys
from services.events.consumer import EndpointConsumer
from services.events.endpoints import load_endpoints
from services.events.metrics import EventsMetrics
from services.events.sender import Sender, tls_context
from services.events.settings import EventsServiceSettings
from services.events.store import Deliveries, ensure_indexes
from shared import keys as shared_keys
from shared.health import add_health_routes, check_amqp, check_mongo, service_app
from shared.resources import amqp_ctx, mongo_ctx

log = logging.getLogger(__name__)


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    endpoints = load_endpoints(settings)
    db = app[shared_keys.MONGO_DB]
    await ensure_indexes(db)
    read = settings.webhook_connect_timeout + 2 * settings.webhook_read_timeout
    deliveries = Deliveries(db, claim_seconds=read + 5)
    tls = tls_context(settings.webhook_cacert)
    senders = [Sender(e, deliveries, settings, app[keys.METRICS], tls) for e in endpoints]
    consumers = [
        EndpointConsumer(
            app[shared_keys.AMQP], settings.events_exchange, s, deliveries, app[keys.METRICS]
        )
        for s in senders
    ]
    app[keys.SENDERS] = senders
    if not endpoints:
        log.warning("no webhook endpoint configured: events are not delivered anywhere")
    for name in (e.name for e in endpoints):
        log.info("webhook endpoint %s configured", name)
    try:
        for sender in senders:
            sender.start()
        for consumer in consumers:
            await consumer.start()
        yield
    finally:
        for consumer in consumers:
            await consumer.stop()
        for sender in senders:
            await sender.stop(timeout=settings.webhook_read_timeout)


def create_app(settings: EventsServiceSettings) -> web.Application:
    app = service_app("carve-events")
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = EventsMetrics.create(app[shared_keys.REGISTRY])
    app.cleanup_ctx.extend([mongo_ctx(settings), amqp_ctx(settings), _webhooks_ctx])
    add_health_routes(app, {"rabbitmq": check_amqp, "mongodb": check_mongo})
    return app
