"""The backends' raw ceilings: what Redis, RabbitMQ and SecantusDB do alone, in the shape of the
services' work (GridFS chunk inserts, confirmed publishes, the ingest's per-block pipeline)."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel
from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from bench.cli import log
from bench.render import MB, KiB, MiB, human
from devstack.backends import Backends
from shared.mongo import Document

Step = Callable[[], Awaitable[int]]


async def _until(step: Step, deadline: float) -> int:
    count = 0
    while time.perf_counter() < deadline:
        count += await step()
    return count


async def timed(steps: Sequence[Step], duration: float) -> tuple[int, float]:
    """Run every step in a loop, concurrently, for ``duration`` s: (total count, seconds)."""
    started = time.perf_counter()
    counts = await asyncio.gather(*(_until(step, started + duration) for step in steps))
    return sum(counts), time.perf_counter() - started


def rate(unit: str, count: int, item_size: int, seconds: float, what: str) -> dict[str, Any]:
    return {
        "what": what,
        "unit": unit,
        "item_bytes": item_size,
        unit: count,
        "seconds": round(seconds, 3),
        f"{unit}_per_s": round(count / seconds, 1),
        "mb_per_s": round(count * item_size / MB / seconds, 2),
    }


# The block sizes whose ceilings bench.upload measures (8 KiB and 1 MiB blocks).
CEILING_SIZES = (8 * KiB, MiB)


def size_tag(size: int) -> str:
    """8192 -> "8k", 1048576 -> "1m": the suffix of a ceiling's key."""
    return f"{size // MiB}m" if size % MiB == 0 else f"{size // KiB}k"


def insert_batch(size: int) -> int:
    """Chunks per insert: insert_many of 64 chunks for small ones (4 MiB at most, as the
    assembler batches its writes), one insert_one per chunk from 1 MiB on."""
    return 1 if size >= MiB else max(1, min(64, 4 * MiB // size))


async def _mongo_inserts(
    chunks: AsyncCollection[Document], size: int, duration: float
) -> tuple[str, dict[str, Any]]:
    data, files_id, counter = Binary(os.urandom(size)), uuid.uuid4().hex, itertools.count()
    batch = insert_batch(size)

    async def step() -> int:
        docs = [{"files_id": files_id, "n": next(counter), "data": data} for _ in range(batch)]
        if batch == 1:
            await chunks.insert_one(docs[0])
        else:
            await chunks.insert_many(docs)
        return batch

    count, seconds = await timed([step], duration)
    kind = "insert_one" if batch == 1 else "insert_many"
    what = f"MongoDB {kind} {batch} x {human(size)} chunks"
    return f"mongo_{kind}_{size_tag(size)}", rate("chunks", count, size, seconds, what)


async def mongo_ceilings(
    url: str, duration: float, sizes: Sequence[int] = CEILING_SIZES
) -> dict[str, dict[str, Any]]:
    """Chunk writes shaped like the assembler's: GridFS chunks with the unique (files_id, n)."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(url)
    db = client[f"bench_ceiling_{uuid.uuid4().hex[:8]}"]
    chunks = db["archives.chunks"]
    try:
        await chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        return dict([await _mongo_inserts(chunks, size, duration) for size in sizes])
    finally:
        await client.drop_database(db.name)
        await client.close()


async def _rabbit_publish(
    channel: AbstractChannel, size: int, duration: float
) -> tuple[str, dict[str, Any]]:
    name = f"bench.ceiling.{size}.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    body = os.urandom(size)
    # 64 in flight, or fewer for large messages: 64 MiB in flight at most.
    publishers = max(1, min(64, 64 * MiB // size))

    async def step() -> int:
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=name)
        return 1

    try:
        count, seconds = await timed([step] * publishers, duration)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    what = f"RabbitMQ confirmed publish {human(size)}, {publishers} in flight"
    return f"rabbit_publish_{size_tag(size)}", rate("messages", count, size, seconds, what)


async def rabbit_ceilings(
    url: str, duration: float, sizes: Sequence[int] = CEILING_SIZES
) -> dict[str, dict[str, Any]]:
    """Persistent publishes with confirms to a durable quorum queue."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        return dict([await _rabbit_publish(channel, size, duration) for size in sizes])
    finally:
        await connection.close()


async def redis_ceiling(url: str, duration: float) -> dict[str, dict[str, Any]]:
    """Sequential round trips of the ingest's per-block pipeline: HGETALL + GETBIT."""
    redis = Redis.from_url(url)
    tag = uuid.uuid4().hex[:8]
    meta, bits = f"bench:{tag}:s", f"bench:{tag}:b"
    await redis.hset(
        meta,
        mapping={
            "carve_id": tag,
            "request_id": tag,
            "block_count": 1000,
            "block_size": 8192,
            "carve_size": 8192000,
            "node_key_sha256": "",
        },
    )
    await redis.setbit(bits, 999, 1)

    async def step() -> int:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(meta)
            pipe.getbit(bits, 7)
            await pipe.execute()
        return 1

    try:
        count, seconds = await timed([step], duration)
    finally:
        await redis.delete(meta, bits)
        await redis.aclose()
    what = "Redis pipeline HGETALL+GETBIT, sequential"
    return {"redis_pipeline": rate("round_trips", count, 0, seconds, what)}


async def measure_ceilings(
    backends: Backends, duration: float, sizes: Sequence[int] = CEILING_SIZES
) -> dict[str, dict[str, Any]]:
    log(f"ceilings: about {duration:g} s each")
    ceilings = await mongo_ceilings(backends.mongo.url, duration, sizes)
    ceilings |= await rabbit_ceilings(backends.rabbit.url, duration, sizes)
    ceilings |= await redis_ceiling(backends.redis.url, duration * 2 / 3)
    return ceilings


def nearest_ceiling(ceilings: dict[str, Any], prefix: str, block_size: int) -> str:
    """The ceiling of one kind (key ``prefix``) measured with the item size nearest the block's."""
    keys = [key for key in ceilings if key.startswith(prefix)]
    return min(keys, key=lambda key: abs(math.log(ceilings[key]["item_bytes"] / block_size)))


def ceiling_keys(block_size: int, ceilings: dict[str, Any]) -> tuple[str, str]:
    """The MongoDB and RabbitMQ ceilings that match a block size."""
    return (
        nearest_ceiling(ceilings, "mongo_", block_size),
        nearest_ceiling(ceilings, "rabbit_", block_size),
    )


def ceiling_lines(ceilings: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for c in ceilings.values():
        unit = c["unit"]
        mb = f"  {c['mb_per_s']:>8} MB/s" if c["item_bytes"] else ""
        lines.append(f"  {c['what']:<48} {c[f'{unit}_per_s']:>9} {unit}/s{mb}")
    return lines
