"""The triage queue: ``carve.completed`` events, each scanned before it is acknowledged.

A durable quorum queue (``CARVE_TRIAGE_QUEUE``) bound to the events exchange with the routing
key ``carve.completed``. Up to ``CARVE_TRIAGE_WORKERS`` events are taken at once and each is
acknowledged only once its carve's result is written (or it needs no scan): events waiting
for a worker stay ready in the queue, where KEDA sees them and adds replicas. A replica that
dies mid-scan gets its events redelivered to another; the claim on the carve document makes
sure only one replica scans it, and the sweep takes it over once the dead one's lease lapses.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from services.triage.scan import Triage
from shared.errors import PoisonMessage, Unavailable
from shared.events import EventType
from shared.events.envelope import decode_event
from shared.events.relay import declare_exchange
from shared.resources import with_amqp_retry
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)
_OUTAGE_PAUSE = 1.0


class CompletedConsumer:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        exchange: str,
        queue: str,
        triage: Triage,
        prefetch: int,
    ) -> None:
        self._connection = connection
        self._exchange = exchange
        self._queue_name = queue
        self._triage = triage
        self._prefetch = prefetch
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        async def setup() -> tuple[AbstractQueue, str]:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            topic = await declare_exchange(channel, self._exchange)
            queue = await channel.declare_queue(
                self._queue_name, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(topic, EventType.COMPLETED.value)
            return queue, await queue.consume(self._on_message)

        self._queue, self._tag = await with_amqp_retry(self._connection, setup, "triage queue")

    async def stop(self) -> None:
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)
        await cancel_and_wait(*self._tasks)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Each event in its own task: the channel's callbacks must not wait for a scan.
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            event = decode_event(message.body)
        except PoisonMessage as exc:
            log.error("triage: dropped a message that is not a carve event: %s", exc)
            await message.reject(requeue=False)
            return
        if event.type != EventType.COMPLETED.value:
            await message.ack()
            return
        try:
            await self._triage.run(event.subject)
        except Unavailable as exc:
            log.warning("triage of %s waits: %s", event.subject, exc)
            await asyncio.sleep(_OUTAGE_PAUSE)
            await message.nack(requeue=True)
            return
        except asyncio.CancelledError:
            raise  # shutting down: the event is redelivered
        except Exception:
            # Acknowledged all the same: a carve whose claim is left behind is taken up
            # again by the sweep, a bounded number of times (services.triage.store).
            log.exception("triage of %s failed", event.subject)
        await message.ack()
