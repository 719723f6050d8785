"""A test's own subscriber to the carve events exchange: what a SIEM's queue would receive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.events.envelope import CarveEvent, decode_event
from shared.events.relay import declare_exchange


@dataclass
class Received:
    """One delivery: the routing key, the AMQP properties that matter, the event it carries."""

    routing_key: str
    content_type: str | None
    message_id: str | None
    persistent: bool
    event: CarveEvent


@dataclass
class Listener:
    received: list[Received] = field(default_factory=list)

    def of(self, carve_id: str) -> list[Received]:
        return [r for r in self.received if r.event.subject == carve_id]

    async def wait(
        self, done: Callable[[list[Received]], bool], timeout: float = 30.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.received):
                return self.received
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"events not seen in {timeout} s: {[r.event.type for r in self.received]}"
        )

    async def wait_type(self, carve_id: str, kind: str, timeout: float = 30.0) -> Received:
        await self.wait(lambda _: any(r.event.type == kind for r in self.of(carve_id)), timeout)
        return next(r for r in self.of(carve_id) if r.event.type == kind)


@asynccontextmanager
async def listening(amqp_url: str, exchange: str, binding: str = "#") -> AsyncIterator[Listener]:
    """A queue of the test's own, bound to ``exchange`` with ``binding``, read as it fills."""
    listener = Listener()
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        topic = await declare_exchange(channel, exchange)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topic, binding)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                listener.received.append(
                    Received(
                        routing_key=message.routing_key or "",
                        content_type=message.content_type,
                        message_id=message.message_id,
                        persistent=message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
                        event=decode_event(message.body),
                    )
                )

        await queue.consume(on_message)
        yield listener
    finally:
        await connection.close()
