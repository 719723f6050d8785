"""Each backend connection as one aiohttp cleanup context.

Setup, ``yield``, teardown: aiohttp runs teardown only for what started, in
reverse order. Each factory takes only its own settings part.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import CommandListener
from redis.asyncio import Redis
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared import keys
from shared.amqp_hosts import connect_any
from shared.mongo import ensure_indexes, make_client
from shared.redis_client import close_redis, make_redis
from shared.settings import AmqpSettings, MongoSettings, RedisSettings

log = logging.getLogger(__name__)

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def redis_ctx(settings: RedisSettings) -> CleanupCtx:
    """Redis client with short socket timeouts, stored under ``keys.REDIS``: one server, a
    Sentinel-watched primary or a Redis Cluster (``shared.redis_client``)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client: Redis = make_redis(settings)
        app[keys.REDIS] = client
        try:
            yield
        finally:
            await close_redis(client)

    return ctx


def amqp_ctx(settings: AmqpSettings) -> CleanupCtx:
    """A robust (auto-reconnecting) AMQP connection, stored under ``keys.AMQP``; with several
    comma-separated URLs, to any node of the cluster that is up (``shared.amqp_hosts``)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connection = await connect_any(
            settings.amqp_url.get_secret_value(),
            timeout=settings.amqp_connect_timeout,
            client_properties={"connection_name": app.get(keys.SERVICE_NAME, "carve")},
        )
        app[keys.AMQP] = connection
        try:
            yield
        finally:
            await connection.close()

    return ctx


def amqp_connected(connection: AbstractRobustConnection) -> bool:
    """True while the robust connection has a live transport (not while it reconnects)."""
    transport = connection.transport
    return transport is not None and not transport.connection.is_closed


def amqp_blocked(connection: AbstractRobustConnection) -> bool:
    """True while RabbitMQ has blocked this connection's publishers (``connection.blocked``:
    a memory or disk alarm), until it sends ``connection.unblocked``.

    aiormq tracks the two frames in a private event and offers no public view of it (only
    ``ready()``, which waits); reading it here is pinned by a test against a real alarm.
    """
    transport = connection.transport
    if transport is None:
        return False
    unblocked = getattr(transport.connection, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


AMQP_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError)
T = TypeVar("T")


async def with_amqp_retry(
    connection: AbstractRobustConnection,
    setup: Callable[[], Awaitable[T]],
    what: str,
    *,
    give_up_after: float = 60.0,
) -> T:
    """Run an AMQP set-up step (declare, consume), retrying while the broker is not ready.

    A quorum queue declared a moment ago can refuse a consumer with
    INTERNAL_ERROR until its replica has started, and the broker then closes
    the connection: wait for the robust connection to come back and try again,
    rather than crash a process that Kubernetes would just restart anyway.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(AMQP_ERRORS),
        wait=wait_exponential(multiplier=0.25, max=5),
        stop=stop_after_delay(give_up_after),
        before_sleep=lambda state: log.warning(
            "%s failed (%s); retrying", what, state.outcome and state.outcome.exception()
        ),
        reraise=True,
    ):
        with attempt:
            async with asyncio.timeout(give_up_after):
                await connection.connected.wait()
            return await setup()
    raise AssertionError("unreachable: tenacity reraises")


# PyMongo command listeners for the app's client (tests record the commands it sends).
MONGO_LISTENERS: web.AppKey[Sequence[CommandListener]] = web.AppKey("mongo_listeners")


def mongo_ctx(
    settings: MongoSettings,
    reads: Callable[[AsyncDatabase[Any]], AsyncDatabase[Any]] | None = None,
) -> CleanupCtx:
    """MongoDB client and database with the required indexes in place; ``reads`` sets how
    the service reads (``shared.mongo.responder_reads``; default: the client's). Command
    listeners in ``app[MONGO_LISTENERS]`` see every command the client sends."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = make_client(settings, event_listeners=app.get(MONGO_LISTENERS, ()))
        try:
            db = client[settings.mongo_db]
            await ensure_indexes(db, settings.mongo_bucket)
            app[keys.MONGO_CLIENT] = client
            app[keys.MONGO_DB] = reads(db) if reads is not None else db
            yield
        finally:
            await client.close()

    return ctx
