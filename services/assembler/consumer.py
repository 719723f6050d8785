"""The broker adapter: deliveries in, acks and rejects out; the only module here using aio-pika.

Each delivery runs in its own task (aio-pika's model). The task parses the
message, calls the pure handler and then acks (stored), rejects to the
dead-letter queue (can never be stored) or keeps retrying while MongoDB is
away: the message stays unacked, so nothing is lost and prefetch stops the
flow. Shutdown has two phases: stop taking deliveries, then wait for the
running ones up to a limit; whatever is still unacked is redelivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from services.assembler.handler import Handled
from services.assembler.metrics import AssemblerMetrics
from shared.errors import PoisonMessage, TransientError
from shared.queue import Block, declare_topology, decode
from shared.resources import with_amqp_retry

log = logging.getLogger(__name__)

Handler = Callable[[Block], Awaitable[Handled]]


class BlockConsumer:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        handler: Handler,
        metrics: AssemblerMetrics,
        *,
        prefetch: int,
        retry_max_delay: float,
    ) -> None:
        self._connection = connection
        self._queue_name = queue_name
        self._handler = handler
        self._metrics = metrics
        self._prefetch = prefetch
        self._retry_max_delay = retry_max_delay
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await with_amqp_retry(self._connection, self._subscribe, f"consuming {self._queue_name}")
        log.info("consuming %s with prefetch %d", self._queue_name, self._prefetch)

    async def _subscribe(self) -> None:
        channel = await self._connection.channel()
        # The broker applies a consumer's prefetch when it subscribes and never again (a
        # later basic.qos only concerns later consumers; quorum queues have no channel-wide
        # one), so the count is fixed here, and memory is about prefetch x message size.
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await declare_topology(channel, self._queue_name)
        self._tag = await queue.consume(self._on_message)
        self._channel, self._queue = channel, queue

    async def stop(self, drain_timeout: float) -> None:
        """Stop deliveries, let running blocks finish for up to ``drain_timeout`` s, close."""
        self._stopping.set()
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
                log.warning("could not cancel the consumer: %s", exc.__class__.__name__)
        pending = set(self._in_flight)
        if pending:
            log.info("draining %d in-flight blocks", len(pending))
            _done, pending = await asyncio.wait(pending, timeout=drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("%d blocks left unacked; the broker will redeliver them", len(pending))
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self._metrics.in_flight.inc()
        try:
            await self._process(message)
        finally:
            self._in_flight.discard(task)
            self._metrics.in_flight.dec()

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            blocks = decode(message.body, message.headers)
        except PoisonMessage as exc:
            await self._dead_letter(message, str(exc))
            return
        delay = 0.25
        while True:
            try:
                outcomes = await self._handle_all(blocks)
            except PoisonMessage as exc:
                await self._dead_letter(message, str(exc))
                return
            except TransientError as exc:
                self._metrics.retries.inc()
                if self._stopping.is_set():
                    await self._settle(message.nack(requeue=True))
                    return
                log.warning("message %s: %s; retrying", _describe(blocks), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
                continue
            except Exception:
                await self._unexpected(message, blocks)
                return
            await self._settle(message.ack())
            self._count(blocks, outcomes)
            return

    async def _handle_all(self, blocks: list[Block]) -> list[Handled]:
        """Handle the blocks of one message together (their chunk writes share batches).

        Storing is idempotent, so after any failure the whole message is
        simply handled again.
        """
        results = await asyncio.gather(*(self._handler(b) for b in blocks), return_exceptions=True)
        for error_type in (PoisonMessage, TransientError, BaseException):
            for result in results:
                if isinstance(result, error_type):
                    raise result
        return [r for r in results if isinstance(r, Handled)]

    def _count(self, blocks: list[Block], outcomes: list[Handled]) -> None:
        for block, outcome in zip(blocks, outcomes, strict=True):
            self._metrics.blocks.labels(outcome.value).inc()
            if outcome is not Handled.DUPLICATE:
                self._metrics.block_bytes.inc(len(block.data))

    async def _unexpected(self, message: AbstractIncomingMessage, blocks: list[Block]) -> None:
        # A bug, not bad data: give it one more delivery, then park it for a human.
        log.exception("message %s: unexpected error", _describe(blocks))
        if message.redelivered:
            await self._dead_letter(message, "unexpected error twice")
        else:
            await self._settle(message.nack(requeue=True))

    async def _dead_letter(self, message: AbstractIncomingMessage, why: str) -> None:
        log.error("dead-lettering message %s: %s", message.message_id, why)
        self._metrics.blocks.labels("dead_lettered").inc()
        await self._settle(message.reject(requeue=False))

    @staticmethod
    async def _settle(action: Awaitable[None]) -> None:
        # After a broker restart the delivery's channel is gone: the broker has
        # already requeued the message, and storing it again is a no-op.
        try:
            await action
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning("could not settle a delivery (%s); it will be redelivered", exc)


def _describe(blocks: list[Block]) -> str:
    first = blocks[0]
    more = f" and {len(blocks) - 1} more" if len(blocks) > 1 else ""
    return f"block {first.carve_id}/{first.block_id}{more}"
