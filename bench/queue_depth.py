"""RabbitMQ queue depth over time, read by the benchmarks while a scenario runs.

A passive ``queue.declare`` answers with the number of messages *ready* in the queue (not
those delivered to a consumer and not yet acknowledged), without creating anything. One
message carries one or more blocks (the ingest batches concurrent blocks), so the depth is
in messages, not blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

DEPTH_INTERVAL = 0.25
READ_TIMEOUT = 5.0


class QueueDepthSampler:
    """``series`` of (seconds since ``origin``, ready messages) every ``interval`` s.

    A sampler never fails the scenario it watches: a read that fails is counted in
    ``failed_reads`` (and the channel reopened). It is never cancelled in the middle of a
    read either (aio-pika closes a channel whose RPC is cancelled): leaving the block stops
    the loop between reads.
    """

    def __init__(
        self, url: str, queue: str, origin: float, interval: float = DEPTH_INTERVAL
    ) -> None:
        self.url = url
        self.queue = queue
        self.origin = origin
        self.interval = interval
        self.series: list[tuple[float, int]] = []
        self.failed_reads = 0
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _channel_open(self) -> AbstractChannel:
        if self._connection is None:
            self._connection = await aio_pika.connect(self.url)
        if self._channel is None or self._channel.is_closed:
            # A passive declare of a missing queue closes the channel: open a new one then.
            self._channel = await self._connection.channel()
        return self._channel

    async def sample(self) -> None:
        try:
            channel = await self._channel_open()
            queue = await channel.declare_queue(self.queue, passive=True, timeout=READ_TIMEOUT)
        except (AMQPError, ChannelInvalidStateError, OSError, TimeoutError):
            self.failed_reads += 1
            self._channel = None
            return
        count = queue.declaration_result.message_count
        self.series.append((round(time.perf_counter() - self.origin, 3), int(count or 0)))

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def __aenter__(self) -> QueueDepthSampler:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.sample()
        if self._connection is not None:
            with contextlib.suppress(AMQPError, OSError):
                await self._connection.close()

    def summary(self) -> dict[str, object]:
        counts = [count for _, count in self.series]
        return {
            "interval_s": self.interval,
            "unit": "messages ready (passive queue.declare)",
            "samples": len(self.series),
            "failed_reads": self.failed_reads,
            "max_messages": max(counts, default=None),
            "series": [list(point) for point in self.series],
        }
