"""The ingest app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.ingest import keys
from services.ingest.abuse import Tally
from services.ingest.admission import Admission
from services.ingest.budget import ByteBudget
from services.ingest.metrics import IngestMetrics
from services.ingest.middlewares import osquery_errors
from services.ingest.publisher import BlockPublisher
from services.ingest.routes import setup_routes
from services.ingest.sessions import SessionStore
from services.ingest.settings import IngestSettings
from shared import keys as shared_keys
from shared.carves import carves_of
from shared.events.relay import RELAY, events_ctx
from shared.health import add_health_routes, check_amqp, check_mongo, check_redis, service_app
from shared.protocol import max_block_body
from shared.quotas import Quotas
from shared.resources import amqp_ctx, mongo_ctx, redis_ctx


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    redis, carves = app[shared_keys.REDIS], carves_of(app[shared_keys.MONGO_DB])
    quotas = Quotas(redis, settings.redis_key_prefix, settings.quota_limits())
    app[keys.SESSIONS] = SessionStore(
        redis,
        carves,
        prefix=settings.redis_key_prefix,
        ttl=settings.session_ttl,
        admission=Admission(quotas, carves),
        events=app[RELAY],
    )
    yield


async def _publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    publisher = BlockPublisher(
        app[shared_keys.AMQP],
        settings.amqp_queue,
        settings.publish_timeout,
        batch_bytes=settings.publish_batch_bytes,
        concurrency=settings.publish_concurrency,
        linger=settings.publish_linger,
        on_batch=app[keys.METRICS].batch_blocks.observe,
        on_linger=app[keys.METRICS].lingered.inc,
    )
    await publisher.open()
    app[keys.PUBLISHER] = publisher
    try:
        yield
    finally:
        await publisher.close()


def create_app(settings: IngestSettings) -> web.Application:
    # client_max_size only guards request.read(); block bodies are read with their own limit.
    app = service_app(
        "carve-ingest",
        middlewares=[osquery_errors],
        client_max_size=max_block_body(settings.max_block_size),
        # How much of a body aiohttp buffers before it stops reading the socket (it
        # buffers up to twice this): requests waiting for the byte budget hold that much each.
        handler_args={"read_bufsize": settings.read_buffer_bytes},
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = IngestMetrics.create(app[shared_keys.REGISTRY])
    app[keys.BUDGET] = ByteBudget(settings.max_inflight_bytes)
    app[keys.DUPLICATES] = Tally(settings.max_duplicates_per_session, ttl=3600.0)
    app[keys.UNKNOWN] = Tally(settings.max_unknown_sessions_per_device, ttl=60.0)
    app.cleanup_ctx.extend(
        [
            redis_ctx(settings),
            mongo_ctx(settings),
            amqp_ctx(settings),
            events_ctx(settings, settings),
            _sessions_ctx,
            _publisher_ctx,
        ]
    )
    setup_routes(app)
    add_health_routes(app, {"redis": check_redis, "rabbitmq": check_amqp, "mongodb": check_mongo})
    return app
