"""Completion never depends on one process's memory (issue 13, part 1).

The ingest publishes a durable "carve fully received" trigger once every block
of a carve is confirmed; an assembler finalizes from it, or puts it in the
delay queue while chunks are still in flight. No janitor runs in these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from devstack.backends import Backends
from services.assembler import main as assembler_main
from services.assembler.consumer import BlockConsumer
from services.assembler.settings import AssemblerSettings
from services.assembler.store import GridChunkStore
from shared.finalize import Finalizer
from shared.queue import RETRY_SUFFIX, encode_received
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

KiB = 1024


async def test_issue_13_last_block_first_two_ingests_assembler_killed_no_janitor(
    ingest_only: Stack,
) -> None:
    stack = ingest_only
    second = await stack.start_ingest()
    up = Upload(stack, random_bytes(31 * 8 * KiB - 100, 13), 8 * KiB)
    assert up.count == 31
    worker = await stack.spawn("assembler")
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        for n, block_id in enumerate(reversed(range(up.count))):  # last block first
            status, _, raw, _ = await up.send(http, block_id, (stack.ingest_url, second.url)[n % 2])
            assert status == 200, raw
    # Every block stored; the assembler's tracker waits for its 2 s idle re-check: kill it.
    deadline = time.monotonic() + 20
    while await stack.chunk_count(up.carve_id) < up.count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    worker.kill(signal.SIGKILL)
    killed = time.monotonic()
    await stack.spawn("assembler")  # what Kubernetes does; no janitor anywhere
    doc = await stack.wait_complete(up.carve_id, timeout=10 - (time.monotonic() - killed))
    took = time.monotonic() - killed
    print(f"complete {took:.1f} s after the SIGKILL")
    assert took < 10
    assert doc["sha256"] == up.sha256 and doc["blocks_received"] == 31
    assert await stack.stored_sha256(up.carve_id) == up.sha256


async def test_a_trigger_that_finds_chunks_missing_comes_back_from_the_delay_queue(
    stack: Stack,
) -> None:
    # No tracker re-check in this process (an hour of idle), so only the trigger can finish it.
    await stack.apps[-1].stop()
    stack.apps.pop()
    await stack.start_assembler(finalize_idle=3600.0)
    up = Upload(stack, random_bytes(6 * 4 * KiB + 5, 21), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
    store = GridChunkStore(stack.db, "archives")
    piece = 4 * KiB
    for i in range(up.count - 1):  # the last chunk is still "in flight"
        await store.put_chunk(up.carve_id, i, up.data[i * piece : (i + 1) * piece])
    queue = stack.env["CARVE_AMQP_QUEUE"]
    connection = await aio_pika.connect(stack.env["CARVE_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(encode_received(up.carve_id), routing_key=queue)
        await asyncio.sleep(2.5)  # looked at, put off, looked at again...
        doc = await stack.carve_doc(up.carve_id)
        assert doc is not None and doc["status"] == "receiving"
        assert doc["chunks_counted"] == up.count - 1  # it was looked at
        last = up.count - 1
        await store.put_chunk(up.carve_id, last, up.data[last * piece :])
        landed = time.monotonic()
        doc = await stack.wait_complete(up.carve_id, timeout=5)
        assert time.monotonic() - landed < 3  # one delay (1 s) and a look
        assert doc["sha256"] == up.sha256
        # Nothing is left behind: neither in the queue nor in the delay queue.
        await asyncio.sleep(1.5)
        for name in (queue, queue + RETRY_SUFFIX):
            declared = await channel.declare_queue(name, passive=True)
            assert declared.declaration_result.message_count == 0, name


async def test_the_tracker_does_not_outlive_a_consumer_that_failed_to_start(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Refused(RuntimeError):
        pass

    async def refuse(self: object) -> None:
        raise Refused("no broker for you")

    def trackers() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() if t.get_name() == "carve-tracker"}

    before = trackers()  # the stack's own assembler
    monkeypatch.setattr(BlockConsumer, "start", refuse)
    settings = stack._settings(AssemblerSettings, {})
    runner = web.AppRunner(assembler_main.create_app(settings))
    with pytest.raises(Refused):
        await runner.setup()
    await runner.cleanup()
    await asyncio.sleep(0)
    assert trackers() - before == set()


async def test_a_finalizer_killed_mid_way_delays_the_carve_by_at_most_its_lease(
    stack: Stack,
) -> None:
    # Every chunk is there, and a finalizer took the lease and died (SIGKILL mid-hash):
    # the trigger is put off while the lease lives, then the carve completes.
    up = Upload(stack, random_bytes(4 * 4 * KiB + 1, 22), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
    store = GridChunkStore(stack.db, "archives")
    for i in range(up.count):
        await store.put_chunk(up.carve_id, i, up.data[i * 4 * KiB : (i + 1) * 4 * KiB])
    dead = Finalizer(stack.db, "archives", owner="dead:1")
    assert await dead._claim(up.carve_id, "dead:1:token")
    died = time.monotonic()
    connection = await aio_pika.connect(stack.env["CARVE_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        queue = stack.env["CARVE_AMQP_QUEUE"]
        await channel.default_exchange.publish(encode_received(up.carve_id), routing_key=queue)
    doc = await stack.wait_complete(up.carve_id, timeout=12)
    took = time.monotonic() - died
    assert 5.0 < took < 9.0, took  # the default lease of 6 s, then one delay and a look
    assert doc["sha256"] == up.sha256


async def test_a_live_finalizer_keeps_its_lease_however_long_it_hashes(stack: Stack) -> None:
    up = Upload(stack, random_bytes(2 * 4 * KiB, 23), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
    live = Finalizer(stack.db, "archives", owner="live:1", lease_seconds=0.6)
    assert await live._claim(up.carve_id, "live:1:token")
    keeper = asyncio.create_task(live._keep_lease(up.carve_id, "live:1:token"))
    try:
        await asyncio.sleep(2.0)  # over three lease lengths
        other = Finalizer(stack.db, "archives", owner="other:1", lease_seconds=0.6)
        assert not await other._claim(up.carve_id, "other:1:token")
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    await asyncio.sleep(0.7)
    assert await other._claim(up.carve_id, "other:1:token")  # silent now: taken over


async def test_a_finalize_goes_on_when_the_broker_closes_the_assembler_s_connection(
    stack: Stack, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RabbitMQ node lost mid-finalize (here: the broker closes every connection) must not
    cut the finalize: aiormq cancels its channel's delivery tasks when the channel closes,
    and a finalize cancelled there kept its lease and left the carve receiving (test_ha)."""
    entered, gate = asyncio.Event(), asyncio.Event()
    cancelled: list[str] = []
    hash_chunks = Finalizer._hash_chunks

    async def held_open(self: Finalizer, doc: Any) -> Any:
        entered.set()
        try:
            await gate.wait()  # the finalize is in the middle of its work, holding the lease
        except asyncio.CancelledError:
            cancelled.append(doc["_id"])
            raise
        return await hash_chunks(self, doc)

    monkeypatch.setattr(Finalizer, "_hash_chunks", held_open)
    up = Upload(stack, random_bytes(6 * 4 * KiB - 7, 24), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(up.count))
    await asyncio.wait_for(entered.wait(), 20)
    backends.rabbit.ctl("close_all_connections", "test: a node went away")
    await asyncio.sleep(1.0)  # the channel's tasks are cancelled now, if ever
    gate.set()
    opened = time.monotonic()
    doc = await stack.wait_complete(up.carve_id, timeout=20)
    took = time.monotonic() - opened
    assert cancelled == [], "the finalize was cancelled with the delivery's channel"
    assert doc["sha256"] == up.sha256 and "finalize_lease" not in doc
    assert await stack.stored_sha256(up.carve_id) == up.sha256
    # Finished by the finalize that held the lease, not by another after it lapsed (6 s).
    assert took < 3.0, took
