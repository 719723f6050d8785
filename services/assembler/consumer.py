"""The broker adapter: deliveries in, acks and rejects out; the only module here using aio-pika.

Each delivery runs in its own task (aio-pika's model). The task parses the
message, calls the pure handler and then acks (stored; ``Acker`` sends one frame
for the deliveries whose writes finished together), rejects to the dead-letter
queue (can never be stored) or keeps retrying while MongoDB is away: the message
stays unacked, so nothing is lost and prefetch stops the
flow. Shutdown has two phases: stop taking deliveries, then wait for the
running ones up to a limit; whatever is still unacked is redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from services.assembler.acks import Acker
from services.assembler.handler import Handled
from services.assembler.metrics import AssemblerMetrics
from shared.errors import PoisonMessage, Unavailable
from shared.queue import (
    RETRY_SUFFIX,
    Block,
    declare_topology,
    decode,
    decode_received,
    encode_received,
    is_received,
)
from shared.resources import with_amqp_retry
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Handler = Callable[[Block], Awaitable[Handled]]
# A "carve fully received" trigger: True when done with it, False to see it again later.
ReceivedHandler = Callable[[str], Awaitable[bool]]

# A trigger that still finds chunks missing after this many looks (RETRY_DELAY_MS apart,
# about 10 minutes) is dropped: a block of it was dead-lettered, or its chunks were lost.
# The janitor then fails or finalizes the carve.
RECEIVED_MAX_ATTEMPTS = 600

# How many recent message sizes the prefetch follows (it follows the largest of them).
_SIZE_WINDOW = 32


@dataclass(eq=False)
class _Subscription:
    """One consumer on its own channel, with the prefetch count it was created with."""

    channel: AbstractChannel
    queue: AbstractQueue
    prefetch: int
    tag: str = ""
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)


class BlockConsumer:
    """Consumes the block queue with a prefetch that follows the size of the messages.

    Memory is about prefetch x message size, and messages range from one 8 KiB block
    to one 8 MiB block, so the count must follow the size. RabbitMQ applies a
    consumer's prefetch only when it subscribes (a later basic.qos concerns later
    consumers; quorum queues have no channel-wide one), so a new count means a new
    consumer: subscribe on a fresh channel with it, cancel the old consumer, let its
    running deliveries finish and close its channel. Whatever the old channel still
    held unacknowledged goes back to the queue and comes again (storing is
    idempotent). The first subscription takes one message, which tells the size.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        handler: Handler,
        metrics: AssemblerMetrics,
        *,
        prefetch: int,
        prefetch_bytes: int,
        retry_max_delay: float,
        handover_timeout: float = 60.0,
        on_received: ReceivedHandler | None = None,
    ) -> None:
        self._on_received = on_received
        self._retry_channel: AbstractChannel | None = None
        self._connection = connection
        self._queue_name = queue_name
        self._handler = handler
        self._metrics = metrics
        self._prefetch = prefetch
        self._prefetch_bytes = prefetch_bytes
        self._retry_max_delay = retry_max_delay
        self._handover_timeout = handover_timeout
        self._sizes: deque[int] = deque(maxlen=_SIZE_WINDOW)
        self._sub: _Subscription | None = None
        self._old: set[_Subscription] = set()  # handing over to ``_sub``
        self._resizing: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._acker = Acker(on_ack=metrics.acks.inc)

    @property
    def prefetch(self) -> int:
        """The prefetch count of the current consumer (0 before it subscribed)."""
        return self._sub.prefetch if self._sub is not None else 0

    @property
    def holding(self) -> int:
        """Deliveries being handled from the current consumer (not from one handing over)."""
        return len(self._sub.in_flight) if self._sub is not None else 0

    @property
    def handing_over(self) -> int:
        """Earlier consumers whose channel is not closed yet."""
        return len(self._old)

    async def start(self) -> None:
        await with_amqp_retry(self._connection, self._open_retry_channel, "opening a channel")
        await with_amqp_retry(
            self._connection, functools.partial(self._subscribe, 1), f"consuming {self._queue_name}"
        )
        log.info("consuming %s, prefetch up to %d", self._queue_name, self._prefetch)

    async def _open_retry_channel(self) -> None:
        # Confirms: a trigger put off for later is acked only once the broker holds it again.
        # on_return_raises: a trigger the broker cannot route (no .retry queue) is an error,
        # not a confirmed publish that went nowhere.
        self._retry_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )

    async def _subscribe(self, prefetch: int) -> None:
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await declare_topology(channel, self._queue_name)
        sub = _Subscription(channel, queue, prefetch)
        sub.tag = await queue.consume(functools.partial(self._on_message, sub))
        self._sub = sub

    async def stop(self, drain_timeout: float) -> None:
        """Stop deliveries, let running blocks finish for up to ``drain_timeout`` s, close."""
        self._stopping.set()
        subs = [*self._old, *([self._sub] if self._sub is not None else [])]
        await cancel_and_wait(self._resizing)
        for sub in subs:
            await self._cancel(sub)
        pending = set(self._in_flight)
        if pending:
            log.info("draining %d in-flight blocks", len(pending))
            _done, pending = await asyncio.wait(pending, timeout=drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("%d blocks left unacked; the broker will redeliver them", len(pending))
        await self._acker.drain()
        for sub in subs:
            await self._close(sub)
        if self._retry_channel is not None and not self._retry_channel.is_closed:
            with contextlib.suppress(AMQPError, ChannelInvalidStateError, ConnectionError):
                await self._retry_channel.close()

    async def _cancel(self, sub: _Subscription) -> None:
        try:
            await sub.queue.cancel(sub.tag)
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning("could not cancel a consumer: %s", exc.__class__.__name__)

    @staticmethod
    async def _close(sub: _Subscription) -> None:
        if not sub.channel.is_closed:
            with contextlib.suppress(AMQPError, ChannelInvalidStateError, ConnectionError):
                await sub.channel.close()

    async def _on_message(self, sub: _Subscription, message: AbstractIncomingMessage) -> None:
        # aiormq runs this callback as a task of the delivery's channel and cancels it when
        # the channel closes (a broker node lost): the work runs in a task of our own, so a
        # chunk write or a finalize is never cut in the middle (a finalize cut there left
        # its lease to lapse and its carve receiving). The broker redelivers the message;
        # storing it again is a no-op. stop() and a prefetch handover wait for that task.
        work = asyncio.create_task(self._handle(sub, message), name="carve-delivery")
        await asyncio.shield(work)

    async def _handle(self, sub: _Subscription, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        sub.in_flight.add(task)
        self._metrics.in_flight.inc()
        self._acker.track(message)
        try:
            await self._process(message)
        finally:
            self._in_flight.discard(task)
            sub.in_flight.discard(task)
            self._metrics.in_flight.dec()

    def _fit_prefetch(self, size: int) -> None:
        """Resubscribe when the recent messages want another count: at once to shrink
        (memory), only once it doubles to grow (so mixed sizes do not churn)."""
        self._sizes.append(size)
        want = max(1, min(self._prefetch, self._prefetch_bytes // max(max(self._sizes), 1)))
        current = self.prefetch
        busy = self._resizing is not None and not self._resizing.done()
        if busy or self._stopping.is_set() or not (want < current or want >= 2 * current):
            return
        self._resizing = asyncio.create_task(self._resize(want), name="prefetch-resize")

    async def _resize(self, prefetch: int) -> None:
        old = self._sub
        try:
            await self._subscribe(prefetch)
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning("could not resubscribe with prefetch %d: %s", prefetch, exc)
            return
        log.info("prefetch %d for messages of this size", prefetch)
        if old is None:
            return
        self._old.add(old)
        try:
            await self._cancel(old)
            if old.in_flight:
                await asyncio.wait(set(old.in_flight), timeout=self._handover_timeout)
            await self._acker.drain()
            await self._close(old)  # anything it still held is requeued, and comes again
        finally:
            self._old.discard(old)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        if is_received(message.headers):
            await self._process_received(message)
            return
        self._fit_prefetch(len(message.body))
        self._observe_lag(message)
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
            except Unavailable as exc:
                self._metrics.retries.inc()
                self._metrics.unavailable.labels(exc.backend.lower()).inc()
                if _channel_closed(message):
                    # Handed over to a new consumer, or the connection dropped: the broker
                    # has requeued this message already, so stop holding it here.
                    log.info("message %s: channel closed, it will come again", _describe(blocks))
                    return
                if self._stopping.is_set():
                    await self._settle(message, message.nack(requeue=True))
                    return
                log.warning("message %s: %s; retrying", _describe(blocks), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
                continue
            except Exception:
                await self._unexpected(message, blocks)
                return
            self._acker.done(message)  # stored: acked with the others stored meanwhile
            self._count(blocks, outcomes)
            return

    def _observe_lag(self, message: AbstractIncomingMessage) -> None:
        """Publish-to-handling time (a redelivery's too: its carve waited all that time)."""
        stamp = message.timestamp
        if stamp is None:
            return
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        self._metrics.lag.observe(max(0.0, (datetime.now(UTC) - stamp).total_seconds()))

    async def _process_received(self, message: AbstractIncomingMessage) -> None:
        """Finalize a carve whose blocks are all in the queue, or look again later."""
        try:
            carve_id, attempt = decode_received(message.body, message.headers)
        except PoisonMessage as exc:
            await self._dead_letter(message, str(exc))
            return
        if self._on_received is None:
            self._acker.done(message)
            return
        delay = 0.25
        while True:
            try:
                done = await self._on_received(carve_id)
                break
            except Unavailable as exc:
                self._metrics.retries.inc()
                self._metrics.unavailable.labels(exc.backend.lower()).inc()
                if _channel_closed(message):
                    return
                if self._stopping.is_set():
                    await self._settle(message, message.nack(requeue=True))
                    return
                log.warning("carve %s trigger: %s; retrying", carve_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
            except Exception:
                log.exception("carve %s trigger: unexpected error", carve_id)
                done = False
                break
        if not done and attempt + 1 >= RECEIVED_MAX_ATTEMPTS:
            log.warning(
                "carve %s: still not whole after %d looks; left to the janitor",
                carve_id,
                attempt + 1,
            )
        elif not done and not await self._look_again_later(carve_id, attempt + 1):
            await self._settle(message, message.nack(requeue=True))
            return
        self._acker.done(message)

    async def _look_again_later(self, carve_id: str, attempt: int) -> bool:
        """Put a trigger in the delay queue (the broker brings it back); False if it failed."""
        channel = self._retry_channel
        try:
            if channel is None or channel.is_closed:
                raise ChannelInvalidStateError("no channel for the delay queue")
            async with asyncio.timeout(10):
                await channel.default_exchange.publish(
                    encode_received(carve_id, attempt), routing_key=self._queue_name + RETRY_SUFFIX
                )
        except (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError) as exc:
            log.warning("carve %s: could not delay its trigger (%s)", carve_id, exc)
            await asyncio.sleep(1.0)
            return False
        return True

    async def _handle_all(self, blocks: list[Block]) -> list[Handled]:
        """Handle the blocks of one message together (their chunk writes share batches).

        Storing is idempotent, so after any failure the whole message is
        simply handled again.
        """
        results = await asyncio.gather(*(self._handler(b) for b in blocks), return_exceptions=True)
        for error_type in (PoisonMessage, Unavailable, BaseException):
            for result in results:
                if isinstance(result, error_type):
                    raise result
        return [r for r in results if isinstance(r, Handled)]

    def _count(self, blocks: list[Block], outcomes: list[Handled]) -> None:
        # Once per outcome and message, not per block: a labelled metric takes a lock.
        for outcome, n in Counter(outcomes).items():
            self._metrics.blocks.labels(outcome.value).inc(n)
        stored = [b for b, o in zip(blocks, outcomes, strict=True) if o is not Handled.DUPLICATE]
        if stored:
            self._metrics.block_bytes.inc(sum(len(block.data) for block in stored))

    async def _unexpected(self, message: AbstractIncomingMessage, blocks: list[Block]) -> None:
        # A bug, not bad data: give it one more delivery, then park it for a human.
        log.exception("message %s: unexpected error", _describe(blocks))
        if message.redelivered:
            await self._dead_letter(message, "unexpected error twice")
        else:
            await self._settle(message, message.nack(requeue=True))

    async def _dead_letter(self, message: AbstractIncomingMessage, why: str) -> None:
        log.error("dead-lettering message %s: %s", message.message_id, why)
        self._metrics.blocks.labels("dead_lettered").inc()
        await self._settle(message, message.reject(requeue=False))

    async def _settle(self, message: AbstractIncomingMessage, action: Awaitable[None]) -> None:
        """A nack or reject, on its own: the acker no longer covers ``message``."""
        self._acker.forget(message)
        # After a broker restart the delivery's channel is gone: the broker has
        # already requeued the message, and storing it again is a no-op.
        try:
            await action
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning("could not settle a delivery (%s); it will be redelivered", exc)


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:  # aio-pika raises this for a closed channel
        return True


def _describe(blocks: list[Block]) -> str:
    first = blocks[0]
    more = f" and {len(blocks) - 1} more" if len(blocks) > 1 else ""
    return f"block {first.carve_id}/{first.block_id}{more}"
