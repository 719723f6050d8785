"""Publishing blocks to RabbitMQ: persistent, confirmed, never waiting past a deadline.

The one module of ingest that touches aio-pika. Blocks of concurrent requests
travel together: with ``linger`` (CARVE_PUBLISH_LINGER, 2 ms by default) a message
waits that long for more blocks (unless it is full first: ``batch_blocks``,
``batch_bytes``), but only while another message is waiting for its confirm: the
hosts of that one send their next blocks once answered. A lone host (one block in
flight at a time) never waits for company that cannot come. While messages wait for
their confirms the blocks that arrive meanwhile are packed into the next one,
so under load the broker confirms many blocks at once. Each request still gets
its reply only after the message holding its block is confirmed; a message
that fails fails every block in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError
from aiormq import spec

from shared.batching import Coalescer
from shared.errors import Unavailable
from shared.queue import Block, blocks_properties, declare_topology, encode_body, encode_received
from shared.resources import AMQP_ERRORS, amqp_blocked, amqp_connected, with_amqp_retry
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# While a message waits for its confirm, how often to look whether the broker blocked us.
_BLOCKED_POLL = 0.05
# At most one new channel per this many seconds after nacks (see _reopen_soon).
_REOPEN_EVERY = 1.0


class BlockPublisher:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue: str,
        timeout: float,
        *,
        batch_blocks: int = 64,
        batch_bytes: int = 1024 * 1024,
        concurrency: int = 1,
        linger: float = 0.0,
        on_batch: Callable[[int], None] = lambda blocks: None,
        on_linger: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_batch = on_batch
        self._connection = connection
        self._queue = queue
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._reopened_at = -_REOPEN_EVERY
        self._batches: Coalescer[Block, None] = Coalescer(
            self._publish_batch,
            batch_blocks,
            weight=lambda block: len(block.data),
            max_weight=batch_bytes,
            concurrency=concurrency,
            linger=linger,
            linger_alone=False,
            on_linger=on_linger,
            inline=True,  # a lone host's block: published in its own request's task
        )

    async def open(self) -> None:
        await with_amqp_retry(self._connection, self._open_channel, f"declaring {self._queue}")

    async def _open_channel(self) -> None:
        # on_return_raises: an unroutable message (queue deleted) must fail, not vanish.
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_topology(channel, self._queue)
        self._channel = channel

    async def close(self) -> None:
        await cancel_and_wait(self._reopening)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    def _reopen_soon(self) -> None:
        """After a nack, publish on a new channel (at most once a second).

        A quorum queue's leader moved to another node: on RabbitMQ 3.10 a channel that
        reached the queue while its old leader was down keeps having every publish
        nacked until that node returns (the drills saw 20 s of it, every block refused),
        while a new channel finds the new leader at once. The failed publish was
        answered 503 anyway (text, so osquery 5.22+ sends the block again; 5.21 and older
        skip it, and the carve ends failed for the missing block after the idle timeout).
        Publishes still awaiting their confirm on the old channel when it closes fail with
        CancelledError: their requests end without a reply, which osquery's HTTP client
        answers by re-sending once on a new connection.
        """
        now = time.monotonic()
        if (self._reopening is not None and not self._reopening.done()) or (
            now - self._reopened_at < _REOPEN_EVERY
        ):
            return
        self._reopened_at = now
        self._reopening = asyncio.create_task(self._reopen(), name="publisher-reopen")

    async def _reopen(self) -> None:
        old = self._channel
        try:
            await self._open_channel()
        except AMQP_ERRORS as exc:  # the connection is down: the robust one reopens it
            log.warning("new publishing channel not opened: %s", exc.__class__.__name__)
            return
        log.warning("a publish was nacked: publishing on a new channel")
        if old is not None and not old.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await old.close()

    async def publish(self, block: Block) -> None:
        """Return once RabbitMQ has confirmed ``block``; raise Unavailable otherwise, quickly."""
        await self._batches.submit(block)

    async def publish_received(self, carve_id: str) -> None:
        """Publish the durable "carve fully received" trigger; return once confirmed."""
        trigger = encode_received(carve_id)
        await self._confirmed(trigger.body, trigger.properties)

    async def _publish_batch(self, blocks: Sequence[Block]) -> list[None]:
        await self._confirmed(encode_body(blocks), blocks_properties(len(blocks)))
        self._on_batch(len(blocks))
        return [None] * len(blocks)

    async def _confirmed(self, body: bytes, properties: spec.Basic.Properties) -> None:
        channel = self._channel
        if channel is None or channel.is_closed or not amqp_connected(self._connection):
            raise Unavailable("rabbitmq", "not connected")
        if amqp_blocked(self._connection):
            # A memory or disk alarm: nothing is confirmed until it clears, so say so now.
            raise Unavailable("rabbitmq", "publishers blocked by a resource alarm")
        try:
            async with asyncio.timeout(self._timeout):
                # What aio-pika's default_exchange.publish(message) does, without the
                # Message object and the typing work of its return (per publish).
                underlay = await channel.get_underlay_channel()
                publish = asyncio.ensure_future(
                    underlay.basic_publish(
                        body, routing_key=self._queue, properties=properties, mandatory=True
                    )
                )
                try:
                    while not publish.done():
                        await asyncio.wait({publish}, timeout=_BLOCKED_POLL)
                        if not publish.done() and amqp_blocked(self._connection):
                            raise Unavailable("rabbitmq", "publishers blocked by a resource alarm")
                finally:
                    publish.cancel()
                await publish
        except TimeoutError as exc:
            # Also what a broker in a memory or disk alarm (blocking publishers) looks like.
            raise Unavailable("rabbitmq", "confirm timed out") from exc
        except DeliveryError as exc:
            self._reopen_soon()
            raise Unavailable("rabbitmq", "message returned or nacked") from exc
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            raise Unavailable("rabbitmq", exc.__class__.__name__) from exc
