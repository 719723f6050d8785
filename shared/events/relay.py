"""The relay: publishes the outbox's pending events to the topic exchange, with confirms.

Every process that changes a carve's state runs one (``events_ctx``). After its own change
it calls ``kick(carve_id)``: the carve's pending events go out at once, each confirmed by
the broker before it is pulled from the outbox. Every ``CARVE_EVENTS_SWEEP_INTERVAL`` it
also publishes events older than ``CARVE_EVENTS_SWEEP_GRACE`` on any carve: those of a
process that died between its change and its publish. A sweep claims a carve for a while
(``outbox_claim``) so that two relays rarely publish the same event twice; when they do,
the event keeps its id and consumers deduplicate on it (delivery is at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from shared import keys
from shared.amqp_hosts import connect_any
from shared.carves import carves_of
from shared.events.envelope import CONTENT_TYPE, encode_event
from shared.events.outbox import CLAIM, FIELD, OutboxEntry
from shared.mongo import Document
from shared.resources import AMQP_ERRORS, CleanupCtx
from shared.settings import AmqpSettings, EventsSettings
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_SWEEP_BATCH = 100
_CLAIM_SECONDS = 60.0
_RETRY_SECONDS = 1.0


async def declare_exchange(channel: aio_pika.abc.AbstractChannel, name: str) -> AbstractExchange:
    """The durable topic exchange of carve events (idempotent)."""
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


class Relay:
    """Publishes pending events of ``db``'s carves to ``exchange``."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        connect: Callable[[], Awaitable[AbstractExchange]],
        settings: EventsSettings,
        registry: CollectorRegistry,
    ) -> None:
        self._carves = carves_of(db)
        self._connect = connect
        self._exchange: AbstractExchange | None = None
        self._settings = settings
        self._wanted: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = Counter(
            "carve_events_published", "Events published to the exchange, by type", ["type"],
            registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "carve_events_relay_errors",
            "Relay rounds that failed (the events stay in the outbox and are retried)",
            registry=registry,
        )

    @property
    def connected(self) -> bool:
        """True once the exchange is declared (the relay can publish)."""
        return self._exchange is not None

    def kick(self, carve_id: str) -> None:
        """Publish ``carve_id``'s pending events soon (returns at once)."""
        self._wanted.add(carve_id)
        self._idle.clear()
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every kicked carve's events are out (or ``timeout``): True if they are."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._idle.is_set()

    async def run(self) -> None:
        """Publish kicked carves' events as they come, and sweep now and then, until cancelled."""
        interval = self._settings.events_sweep_interval
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_sweep - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._exchange is None:
                    self._exchange = await self._connect()
                await self._publish_wanted()
                if loop.time() >= next_sweep:
                    await self.sweep()
                    next_sweep = loop.time() + interval
            except (TimeoutError, *AMQP_ERRORS, PyMongoError) as exc:
                self.errors.inc()
                log.warning("events not published yet (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(_RETRY_SECONDS)
                self._wake.set()
            if not self._wanted:
                self._idle.set()

    async def _publish_wanted(self) -> None:
        while self._wanted:
            carve_id = next(iter(self._wanted))
            doc = await self._carves.find_one({"_id": carve_id}, {FIELD: 1})
            await self._publish(carve_id, doc.get("outbox", []) if doc else [])
            self._wanted.discard(carve_id)

    async def sweep(self) -> int:
        """Publish events left pending past the grace period on any carve; how many."""
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self._settings.events_sweep_grace)
        query: dict[str, Any] = {f"{FIELD}.time": {"$lt": cutoff}}
        found = self._carves.find({**query, CLAIM: {"$not": {"$gt": now}}}, {"_id": 1})
        published = 0
        for doc in await found.limit(_SWEEP_BATCH).to_list():
            claimed = await self._carves.find_one_and_update(
                {"_id": doc["_id"], **query, CLAIM: {"$not": {"$gt": now}}},
                {"$set": {CLAIM: now + timedelta(seconds=_CLAIM_SECONDS)}},
                {FIELD: 1},
                return_document=ReturnDocument.AFTER,
            )
            if claimed is not None:  # else another relay took it, or it went out meanwhile
                published += await self._publish(doc["_id"], claimed.get("outbox", []))
        if published:
            log.info("events relay: %d left-behind events published", published)
        return published

    async def _publish(self, carve_id: str, entries: list[OutboxEntry]) -> int:
        """Publish ``entries`` in order, each confirmed, then pull them from the outbox."""
        if not entries:
            return 0
        if self._exchange is None:
            self._exchange = await self._connect()
        for entry in entries:
            message = aio_pika.Message(
                encode_event(entry, carve_id, self._settings.events_source),
                content_type=CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=entry["id"],
                type=entry["type"],
            )
            await self._exchange.publish(
                message, routing_key=entry["type"], timeout=self._settings.events_publish_timeout
            )
            self.published.labels(entry["type"]).inc()
        ids = [entry["id"] for entry in entries]
        await self._carves.update_one(
            {"_id": carve_id}, {"$pull": {FIELD: {"id": {"$in": ids}}}, "$unset": {CLAIM: ""}}
        )
        return len(entries)


RELAY = web.AppKey("events_relay", Relay)


async def _connect(amqp: AmqpSettings) -> AbstractRobustConnection:
    return await connect_any(
        amqp.amqp_url.get_secret_value(),
        timeout=amqp.amqp_connect_timeout,
        client_properties={"connection_name": "carve-events-relay"},
    )


def events_ctx(settings: EventsSettings, amqp: AmqpSettings) -> CleanupCtx:
    """The relay of a service that changes carves' states, under ``RELAY`` (after the MongoDB
    context, and the AMQP one if the service has it; else the relay opens its own connection).

    The service never waits for the broker to start: until the relay reaches it, events wait
    in the outbox. On shutdown it gives kicked events a moment to go out; what is left stays
    in the outbox for the next sweep, its own or another process's.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        db = app[keys.MONGO_DB]
        # The relay's own connection, when the service has none: opened in a task of its own,
        # so that a shutdown in the middle of connecting waits for it and closes it rather
        # than cancelling it half-open (a socket nobody closes).
        own: list[asyncio.Task[AbstractRobustConnection]] = []

        async def connect() -> AbstractExchange:
            connection = app.get(keys.AMQP)
            if connection is None:
                if not own or (own[0].done() and own[0].exception() is not None):
                    own[:] = [asyncio.create_task(_connect(amqp), name="events-relay-connect")]
                connection = await asyncio.shield(own[0])
            channel = await connection.channel(publisher_confirms=True)
            return await declare_exchange(channel, settings.events_exchange)

        relay = Relay(db, connect, settings, app[keys.REGISTRY])
        app[RELAY] = relay
        task = asyncio.create_task(relay.run(), name="events-relay")
        try:
            yield
        finally:
            await relay.drain(timeout=min(5.0, settings.events_publish_timeout))
            await cancel_and_wait(task)
            for pending in own:
                # Bounded: a broker that stopped answering must not hold the shutdown.
                with contextlib.suppress(*AMQP_ERRORS, OSError, TimeoutError):
                    async with asyncio.timeout(amqp.amqp_connect_timeout * 2):
                        await (await pending).close()

    return ctx
