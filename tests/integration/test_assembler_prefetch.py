"""The assembler's prefetch against a real RabbitMQ: the broker never hands one process more
than CARVE_PREFETCH unacknowledged messages, which is what bounds its memory."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from prometheus_client import CollectorRegistry

from services.assembler.consumer import BlockConsumer
from services.assembler.handler import Handled
from services.assembler.metrics import AssemblerMetrics
from shared.queue import Block, declare_topology, encode
from tests.conftest import Backends


async def test_a_live_consumer_holds_at_most_prefetch_messages(backends: Backends) -> None:
    connection = await aio_pika.connect_robust(backends.rabbit.url)
    queue_name = f"t.prefetch.{uuid.uuid4().hex[:8]}"
    entered: list[int] = []
    release = asyncio.Event()

    async def handler(block: Block) -> Handled:
        entered.append(block.block_id)
        await release.wait()  # a MongoDB that does not answer: nothing is acknowledged
        return Handled.WRITTEN

    metrics = AssemblerMetrics.create(CollectorRegistry())
    consumer = BlockConsumer(
        connection, queue_name, handler, metrics, prefetch=3, retry_max_delay=1.0
    )
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, queue_name)
        for n in range(10):
            block = Block("c" * 8, n, 10, 4, 40, b"abcd")
            await channel.default_exchange.publish(encode([block]), routing_key=queue_name)
        await consumer.start()
        await asyncio.sleep(1.0)
        # Every delivery starts its own handler at once, so 3, not 10: the broker holds the
        # rest back. (A quorum queue's ready count in queue.declare-ok lags, so not that.)
        assert len(entered) == 3
        release.set()
        for _ in range(100):  # acknowledged ones make room for the rest
            if len(entered) == 10:
                break
            await asyncio.sleep(0.05)
        assert sorted(entered) == list(range(10))
    finally:
        release.set()
        await consumer.stop(drain_timeout=5.0)
        cleanup = await connection.channel()
        await cleanup.queue_delete(queue_name)
        await cleanup.queue_delete(queue_name + ".dead")
        await cleanup.exchange_delete(queue_name + ".dlx")
        await connection.close()
