"""The assembler app factory: a queue consumer inside the aiohttp lifecycle.

The HTTP side only serves /healthz, /readyz and /metrics; the work is the
consumer, started and drained by a cleanup context.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from services.assembler import keys
from services.assembler.consumer import BlockConsumer
from services.assembler.handler import handle_block, handle_received
from services.assembler.metrics import AssemblerMetrics, TimedFinalizer
from services.assembler.settings import AssemblerSettings
from services.assembler.store import GridChunkStore
from services.assembler.tracker import CarveTracker
from shared import keys as shared_keys
from shared.crypto.context import KEYRING, keyring_ctx, transit_checks
from shared.events.relay import RELAY, events_ctx
from shared.finalize import Finalizer
from shared.health import add_health_routes, check_amqp, check_mongo, service_app
from shared.metrics import add_scrape_hook
from shared.queue import DEAD_SUFFIX, RETRY_SUFFIX
from shared.queue_depth import ready_messages
from shared.resources import amqp_ctx, mongo_ctx


async def _consumer_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    metrics = app[keys.METRICS]
    db = app[shared_keys.MONGO_DB]
    finalizer = TimedFinalizer(
        Finalizer(
            db,
            settings.mongo_bucket,
            owner=f"{socket.gethostname()}:{os.getpid()}",
            lease_seconds=settings.finalize_lease,
            events=app[RELAY],
            keys=app[KEYRING],
        ),
        metrics,
    )
    store = GridChunkStore(
        db,
        settings.mongo_bucket,
        batch=settings.write_batch,
        batch_bytes=settings.write_batch_bytes,
        keys=app[KEYRING],
        linger=settings.write_linger,
    )
    tracker = CarveTracker(
        store, finalizer, interval=settings.progress_interval, idle=settings.finalize_idle
    )
    handler = functools.partial(handle_block, store=store, finalizer=finalizer, tracker=tracker)
    consumer = BlockConsumer(
        app[shared_keys.AMQP],
        settings.amqp_queue,
        handler,
        metrics,
        on_received=functools.partial(handle_received, finalizer=finalizer),
        prefetch=settings.prefetch,
        prefetch_bytes=settings.prefetch_bytes,
        retry_max_delay=settings.retry_max_delay,
    )
    try:
        # Inside the try: a consumer that fails to start must not leave the tracker running.
        tracker.start()
        await consumer.start()
        app[keys.CONSUMER] = consumer
        yield
    finally:
        await consumer.stop(settings.drain_timeout)
        await tracker.stop()


def create_app(settings: AssemblerSettings) -> web.Application:
    app = service_app("carve-assembler")
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = AssemblerMetrics.create(app[shared_keys.REGISTRY])
    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            amqp_ctx(settings),
            events_ctx(settings, settings),
            keyring_ctx(settings),
            _consumer_ctx,
        ]
    )
    add_health_routes(
        app, {"rabbitmq": check_amqp, "mongodb": check_mongo, **transit_checks(settings)}
    )
    add_scrape_hook(app, functools.partial(_count_queues, app))
    return app


async def _count_queues(app: web.Application) -> None:
    queue = app[keys.SETTINGS].amqp_queue
    names = (queue, queue + DEAD_SUFFIX, queue + RETRY_SUFFIX)
    depths = await ready_messages(app[shared_keys.AMQP], names)
    for name, messages in depths.items():
        app[keys.METRICS].queue_messages.labels(name).set(messages)
