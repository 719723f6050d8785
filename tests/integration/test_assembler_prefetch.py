"""The assembler's prefetch against a real RabbitMQ: the broker hands a process about
CARVE_PREFETCH_BYTES of messages, whatever their size, which is what bounds its memory.

RabbitMQ applies a consumer's prefetch only when it subscribes, so the consumer changes it by
subscribing again: these tests check that the count really follows the size, and that the
handover loses nothing. And the acks: deliveries stored together are settled by one
``basic.ack`` with ``multiple``, a delivery is never acked before its blocks are stored, and
one slow delivery does not hold the acks of the others."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from prometheus_client import CollectorRegistry

from devstack.backends import Backends
from services.assembler.consumer import BlockConsumer
from services.assembler.handler import Handled
from services.assembler.metrics import AssemblerMetrics
from shared.queue import Block, declare_topology, encode


@dataclass
class Rig:
    connection: AbstractRobustConnection
    channel: AbstractChannel
    queue: str
    entered: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, first: int, count: int, size: int) -> None:
        for n in range(first, first + count):
            block = Block("c" * 8, n, 1000, size, 1000 * size, bytes(size))
            await self.channel.default_exchange.publish(encode([block]), routing_key=self.queue)

    def consumer(self, blocks_at: Callable[[int], bool], **options: Any) -> BlockConsumer:
        async def handler(block: Block) -> Handled:
            self.entered.append(block.block_id)
            if blocks_at(block.block_id):
                await self.release.wait()  # a MongoDB that does not answer: no ack
            self.done.add(block.block_id)
            return Handled.WRITTEN

        metrics = AssemblerMetrics.create(CollectorRegistry())
        return BlockConsumer(
            self.connection, self.queue, handler, metrics, retry_max_delay=1.0, **options
        )

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)


@pytest.fixture
async def rig(backends: Backends) -> AsyncIterator[Rig]:
    connection = await aio_pika.connect_robust(backends.rabbit.url)
    channel = await connection.channel(publisher_confirms=True)
    queue = f"t.prefetch.{uuid.uuid4().hex[:8]}"
    await declare_topology(channel, queue)
    try:
        yield Rig(connection, channel, queue)
    finally:
        await channel.queue_delete(queue)
        await channel.queue_delete(queue + ".dead")
        await channel.exchange_delete(queue + ".dlx")
        await connection.close()


async def test_small_messages_raise_the_prefetch_to_its_cap(rig: Rig) -> None:
    await rig.publish(0, 20, 4)  # messages of about 60 bytes
    consumer = rig.consumer(lambda n: True, prefetch=5, prefetch_bytes=1 << 20)
    try:
        await consumer.start()
        # The first subscription takes one message; its size asks for the cap of 5.
        await rig.until(lambda: consumer.prefetch == 5)
        await asyncio.sleep(1.0)
        # Every handler is stuck: the first consumer's one message, then 5 for the new one.
        assert len(rig.entered) == 1 + 5
        rig.release.set()
        await rig.until(lambda: rig.done == set(range(20)))
    finally:
        rig.release.set()
        await consumer.stop(drain_timeout=5.0)


async def test_big_messages_lower_it_and_nothing_is_lost_in_the_handover(rig: Rig) -> None:
    consumer = rig.consumer(lambda n: n >= 100, prefetch=8, prefetch_bytes=2000, handover_timeout=1)
    try:
        await rig.publish(0, 10, 4)  # small: 2000 // ~60 bytes, so the cap of 8
        await consumer.start()
        await rig.until(lambda: rig.done == set(range(10)))
        await rig.until(lambda: consumer.prefetch == 8)
        await rig.publish(100, 10, 900)  # ~950 bytes each: 2000 // 950 = 2
        await rig.until(lambda: consumer.prefetch == 2)
        # The old consumer held up to 8 stuck deliveries; after the handover timeout its
        # channel is closed (they go back to the queue) and the new consumer holds 2.
        await rig.until(lambda: consumer.handing_over == 0)
        await rig.until(lambda: consumer.holding == 2)
        await asyncio.sleep(0.5)
        assert consumer.holding == 2
        rig.release.set()
        await rig.until(lambda: rig.done >= set(range(100, 110)))
    finally:
        rig.release.set()
        await consumer.stop(drain_timeout=5.0)


def acks(consumer: BlockConsumer) -> float:
    """basic.ack frames the consumer sent (its carve_assembler_acks_total)."""
    return float(consumer._metrics.acks._value.get())


async def test_deliveries_stored_together_share_one_ack(rig: Rig) -> None:
    await rig.publish(0, 20, 4)
    consumer = rig.consumer(lambda n: True, prefetch=32, prefetch_bytes=1 << 20)
    try:
        await consumer.start()
        # Every handler waits (an insert_many that has not answered yet).
        await rig.until(lambda: len(rig.entered) == 20)
        await asyncio.sleep(0.2)
        assert acks(consumer) == 0  # nothing acked before it is stored
        rig.release.set()
        await rig.until(lambda: rig.done == set(range(20)))
        await asyncio.sleep(0.3)
        # One frame per channel (the first subscription's and the one that took over), not
        # one per delivery.
        assert acks(consumer) == 2
    finally:
        rig.release.set()
        await consumer.stop(drain_timeout=5.0)
    # All 20 were settled: a new consumer gets none of them again.
    rig.entered.clear()
    again = rig.consumer(lambda n: False, prefetch=32, prefetch_bytes=1 << 20)
    try:
        await again.start()
        await asyncio.sleep(2.0)
    finally:
        await again.stop(drain_timeout=5.0)
    assert rig.entered == []


async def test_a_slow_delivery_holds_only_its_own_ack(rig: Rig) -> None:
    await rig.publish(0, 12, 4)
    consumer = rig.consumer(lambda n: n == 5, prefetch=32, prefetch_bytes=1 << 20)
    try:
        await consumer.start()
        await rig.until(lambda: rig.done == set(range(12)) - {5})
        await asyncio.sleep(0.3)  # the acks of the finished ones are on their way
    finally:
        await consumer.stop(drain_timeout=0.2)  # block 5 is cancelled, never stored
    assert 5 not in rig.done
    # Only block 5 comes again: the others were acked although 5 was still at work, and
    # block 5 was not acked by any of their frames.
    rig.entered.clear()
    again = rig.consumer(lambda n: False, prefetch=32, prefetch_bytes=1 << 20)
    try:
        await again.start()
        await rig.until(lambda: 5 in rig.done, timeout=30)
        await asyncio.sleep(1.0)
    finally:
        await again.stop(drain_timeout=5.0)
    assert rig.entered == [5]
