"""Each endpoint's own queue: bound to the events exchange with the endpoint's patterns.

An event taken from it is recorded as a delivery in MongoDB (``store``), the endpoint's
sender is woken, and only then is the message acknowledged: a process that dies in between
gets it redelivered, and recording it again is a no-op (one delivery per endpoint and event).
The queue is durable (a quorum queue) and lapses after ``QUEUE_EXPIRES_MS`` without a
consumer, so an endpoint removed from the configuration does not leave a queue filling
forever.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from pymongo.errors import PyMongoError

from services.events.endpoints import Endpoint
from services.events.metrics import EventsMetrics
from services.events.sender import Sender
from services.events.store import Deliveries
from shared.errors import PoisonMessage
from shared.events.envelope import decode_event
from shared.events.relay import declare_exchange
from shared.resources import with_amqp_retry

log = logging.getLogger(__name__)

QUEUE_EXPIRES_MS = 14 * 24 * 3600 * 1000
_PREFETCH = 32
_OUTAGE_PAUSE = 1.0


def queue_name(exchange: str, endpoint: str) -> str:
    return f"{exchange}.webhook.{endpoint}"


class EndpointConsumer:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        exchange: str,
        sender: Sender,
        deliveries: Deliveries,
        metrics: EventsMetrics,
    ) -> None:
        self._connection = connection
        self._exchange = exchange
        self._sender = sender
        self._endpoint: Endpoint = sender.endpoint
        self._deliveries = deliveries
        self._metrics = metrics
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self) -> None:
        async def setup() -> tuple[AbstractQueue, str]:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=_PREFETCH)
            topic = await declare_exchange(channel, self._exchange)
            queue = await channel.declare_queue(
                queue_name(self._exchange, self._endpoint.name),
                durable=True,
                arguments={"x-queue-type": "quorum", "x-expires": QUEUE_EXPIRES_MS},
            )
            for pattern in self._endpoint.bindings():
                await queue.bind(topic, pattern)
            return queue, await queue.consume(self._on_message)

        self._queue, self._tag = await with_amqp_retry(
            self._connection, setup, f"webhook queue of {self._endpoint.name}"
        )

    async def stop(self) -> None:
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        name = self._endpoint.name
        try:
            event = decode_event(message.body)
        except PoisonMessage as exc:
            log.error("webhook %s: dropped a message that is not a carve event: %s", name, exc)
            self._metrics.received.labels(name, "poison").inc()
            await message.reject(requeue=False)
            return
        if not self._endpoint.wants(event.type):  # the broker's patterns are wider than globs
            await message.ack()
            return
        try:
            recorded = await self._deliveries.record(name, event)
        except PyMongoError as exc:
            log.warning("webhook %s: MongoDB unavailable (%s); event kept", name, exc)
            await asyncio.sleep(_OUTAGE_PAUSE)
            await message.nack(requeue=True)
            return
        self._metrics.received.labels(name, "recorded" if recorded else "duplicate").inc()
        self._sender.wake()
        await message.ack()
