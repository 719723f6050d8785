"""Faults lose nothing: killed workers, racing finalizers, backends that stop and come back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from clients.osquery_sim import build_synthetic_archive, carve
from devstack.backends import Backends
from devstack.services import scrape
from services.assembler.store import GridChunkStore
from shared.finalize import Finalizer, Outcome
from shared.queue import Block, encode
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

KiB = 1024


async def assert_complete(stack: Stack, up: Upload, timeout: float = 60.0) -> None:
    doc = await stack.wait_complete(up.carve_id, timeout)
    assert doc["sha256"] == up.sha256
    assert doc["blocks_received"] == up.count
    assert await stack.chunk_count(up.carve_id) == up.count
    assert await stack.stored_sha256(up.carve_id) == up.sha256


async def test_assembler_sigkilled_mid_carve_loses_nothing(ingest_only: Stack) -> None:
    stack = ingest_only
    up = Upload(stack, random_bytes(400 * 64 * KiB - 123, 1), 64 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(up.count))  # all queued, nothing stored yet
    assert await stack.chunk_count(up.carve_id) == 0
    # One block at a time, so the kill lands in the middle of the carve.
    slow = {"CARVE_PREFETCH": "1", "CARVE_WRITE_BATCH": "1"}
    worker = await stack.spawn("assembler", **slow)
    deadline = time.monotonic() + 30
    while await stack.chunk_count(up.carve_id) < 40 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    worker.kill(signal.SIGKILL)
    at_kill = await stack.chunk_count(up.carve_id)
    assert 40 <= at_kill < up.count
    assert (await stack.carve_doc(up.carve_id) or {})["status"] == "receiving"
    await stack.spawn("assembler")
    await assert_complete(stack, up)


async def all_chunks_stored(stack: Stack, seed: int) -> Upload:
    """A carve whose chunks are all in GridFS and which nobody has finalized yet."""
    up = Upload(stack, random_bytes(50 * 4 * KiB + 7, seed), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
    store = GridChunkStore(stack.db, "archives")
    for i in range(up.count):
        assert await store.put_chunk(up.carve_id, i, up.data[i * 4 * KiB : (i + 1) * 4 * KiB])
    return up


async def race(finalizers: list[Finalizer], up: Upload, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shared.finalize"):
        results = await asyncio.gather(*(f.maybe_finalize(up.carve_id) for f in finalizers))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.FINALIZED) == 1, outcomes
    assert set(outcomes) <= {Outcome.FINALIZED, Outcome.BUSY, Outcome.NOT_RECEIVING}
    # Only the winner read the archive back and wrote the files document.
    assert not [r for r in caplog.records if "already written" in r.message]
    assert await stack_files(up) == 1
    await assert_complete(up.stack, up)
    assert (await finalizers[0].maybe_finalize(up.carve_id)).outcome is Outcome.NOT_RECEIVING


async def stack_files(up: Upload) -> int:
    return await up.stack.db["archives.files"].count_documents({"_id": up.carve_id})


async def test_racing_finalizers_finalize_once(
    ingest_only: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # Eight assembler processes at once.
    up = await all_chunks_stored(ingest_only, 2)
    await race(
        [Finalizer(ingest_only.db, "archives", owner=f"asm-{k}") for k in range(8)], up, caplog
    )
    # Four attempts inside one process: the last block and the idle re-check can race there.
    up = await all_chunks_stored(ingest_only, 3)
    same = Finalizer(ingest_only.db, "archives", owner="asm-x", concurrency=4)
    await race([same] * 4, up, caplog)


async def test_two_assembler_processes_share_carves(ingest_only: Stack, tmp_path: Path) -> None:
    stack = ingest_only
    uploads = [Upload(stack, random_bytes(30 * 8 * KiB + k, 10 + k), 8 * KiB) for k in range(6)]
    async with aiohttp.ClientSession() as http:
        for up in uploads:
            await up.start(http)
            await up.send_all(http, range(up.count))
    workers = await asyncio.gather(stack.spawn("assembler"), stack.spawn("assembler"))
    for up in uploads:
        await assert_complete(stack, up)
    key = 'carve_finalized_total{outcome="finalized"}'
    finalized = [(await scrape(w.url)).get(key, 0.0) for w in workers]
    assert sum(finalized) == len(uploads)


async def assert_retry_later(
    stack: Stack, http: aiohttp.ClientSession, up: Upload, block: int, backend: str
) -> None:
    """Block ``block`` gets osquery's "retry" answer fast, and /readyz names the culprit."""
    status, ctype, raw, took = await up.send(http, block)
    assert (status, ctype) == (503, "text/plain"), raw
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert took < 2.0
    async with http.get(stack.ingest_url + "/readyz") as resp:
        ready = await resp.json()
    assert resp.status == 503
    assert {name for name, state in ready["checks"].items() if state != "ok"} == {backend}


async def test_redis_restart_gives_fast_503_then_recovers(stack: Stack, backends: Backends) -> None:
    up = Upload(stack, random_bytes(20 * 4 * KiB, 3), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(10))
        backends.redis.stop()
        try:
            await assert_retry_later(stack, http, up, 10, "redis")
        finally:
            backends.redis.start()  # empty: every session is gone
        # The replica that cached the session finds it gone when recording the block, and
        # rebuilds it from MongoDB; a replica that never saw it rebuilds it on lookup.
        await up.send_all(http, [10])
        other = await stack.start_ingest()
        await up.send_all(http, range(11, up.count), other.url)
    await assert_complete(stack, up)


async def send_until_taken(http: aiohttp.ClientSession, up: Upload, first: int) -> int:
    """Send blocks ``first``... in order, each again until it gets a 200 (as osquery 5.22+
    retries), for up to 60 s; the index of the first block not taken (``up.count``: all)."""
    deadline = time.monotonic() + 60
    i = first
    while i < up.count and time.monotonic() < deadline:
        status, _, _, _ = await up.send(http, i)
        if status == 200:
            i += 1
        else:
            await asyncio.sleep(0.5)
    return i


async def test_rabbitmq_stopped_gives_fast_503_then_recovers(
    stack: Stack, backends: Backends
) -> None:
    up = Upload(stack, random_bytes(20 * 4 * KiB, 4), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(10))
        backends.rabbit.stop()
        try:
            await assert_retry_later(stack, http, up, 10, "rabbitmq")
        finally:
            backends.rabbit.start()
        # Like osquery 5.22+, retry until the robust connection is back.
        assert await send_until_taken(http, up, 10) == up.count
    await assert_complete(stack, up)


async def test_broker_blocking_publishers_gives_an_immediate_503(
    stack: Stack, backends: Backends
) -> None:
    """A RabbitMQ memory alarm blocks publishers (connection.blocked): the ingest answers 503
    at once while it lasts, not after CARVE_PUBLISH_TIMEOUT (5 s by default)."""
    up = Upload(stack, random_bytes(4 * 4 * KiB, 6), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, [0])
        backends.rabbit.ctl("set_vm_memory_high_watermark", "0")
        try:
            # The first publish after the alarm is the one RabbitMQ blocks, and says so.
            for i in (1, 2, 1):
                status, ctype, raw, took = await up.send(http, i)
                assert (status, ctype) == (503, "text/plain"), raw
                assert (
                    raw == b"service unavailable: rabbitmq publishers blocked by a resource alarm\n"
                )
                assert took < 1.0, f"block {i}: {took:.2f} s"
        finally:
            backends.rabbit.ctl("set_vm_memory_high_watermark", "0.4")
        # Over: blocks are taken again as soon as RabbitMQ unblocks the connection.
        deadline = time.monotonic() + 20
        while (await up.send(http, 1))[0] != 200:
            assert time.monotonic() < deadline, "still refused after the alarm cleared"
            await asyncio.sleep(0.2)
        await up.send_all(http, range(2, up.count))
    await assert_complete(stack, up)


async def test_sigterm_drains_the_assembler(ingest_only: Stack) -> None:
    stack = ingest_only
    up = Upload(stack, random_bytes(200 * 16 * KiB + 9, 7), 16 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(up.count))
    worker = await stack.spawn("assembler", CARVE_PREFETCH="4", CARVE_WRITE_BATCH="1")
    while await stack.chunk_count(up.carve_id) < 20:
        await asyncio.sleep(0.01)
    worker.kill(signal.SIGTERM)
    assert worker.proc.returncode == 0
    assert await stack.chunk_count(up.carve_id) < up.count
    log = worker.log_path.read_text()
    assert "Traceback" not in log
    await stack.spawn("assembler")
    await assert_complete(stack, up)


async def test_mongodb_down_keeps_blocks_queued(stack: Stack, backends: Backends) -> None:
    up = Upload(stack, random_bytes(30 * 4 * KiB + 1, 5), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        backends.mongo.stop()
        try:
            await up.send_all(http, range(up.count))  # ingest needs only Redis and RabbitMQ here
            await asyncio.sleep(1.0)  # the assembler is retrying, not acking
        finally:
            backends.mongo.start()
    await assert_complete(stack, up)


async def test_poison_messages_are_dead_lettered(
    stack: Stack, names: dict[str, str], backends: Backends, tmp_path: Path
) -> None:
    queue = names["amqp_queue"]
    connection = await aio_pika.connect_robust(backends.rabbit.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        good = encode([Block("x", 0, 1, 4, 4, b"abcd")])
        bad: list[tuple[bytes, dict[str, Any]]] = [
            (good.body, {}),  # no headers at all
            (good.body, {"format": "carve-blocks/0", "count": 1}),  # unknown format
            (good.body, {**good.headers, "count": 2}),  # count disagrees
            (good.body[:-1], dict(good.headers)),  # truncated
            (encode([Block("x", 3, 1, 4, 4, b"abcd")]).body, dict(good.headers)),  # out of range
        ]
        for body, headers in bad:
            message = aio_pika.Message(body, headers=headers, delivery_mode=2)
            await channel.default_exchange.publish(message, routing_key=queue)
        # Valid work behind the poison still gets done.
        archive = build_synthetic_archive(50 * KiB, tmp_path, carve_guid=str(uuid.uuid4()))
        async with aiohttp.ClientSession() as http:
            result = await carve(http, stack.ingest_url, archive, block_size=4 * KiB)
        assert result.ok
        doc = await stack.wait_complete(result.carve_id)
        assert doc["sha256"] == result.sha256
        dead = await channel.declare_queue(
            queue + ".dead", durable=True, arguments={"x-queue-type": "quorum"}
        )
        bodies: list[bytes] = []
        for _ in range(50):
            dead_letter = await dead.get(fail=False)
            if dead_letter is None:
                if len(bodies) == len(bad):
                    break
                await asyncio.sleep(0.1)
                continue
            bodies.append(dead_letter.body)
            await dead_letter.ack()
        assert bodies == [body for body, _ in bad]
    finally:
        await connection.close()


async def test_broker_lost_while_a_batch_lingers_fails_exactly_that_batch(
    ingest_only: Stack, backends: Backends
) -> None:
    """A lone host's block is published at once, whatever the linger. Blocks that arrive
    while another message awaits its confirm wait together for one publish: a broker lost
    while they wait fails every one of them (none is recorded, a re-send is stored), and
    the blocks confirmed before keep their 200 and reach the assembler."""
    stack = ingest_only
    # A linger long enough to kill the broker meanwhile.
    lingering = await stack.start_ingest(publish_linger=2.0)
    up = Upload(stack, random_bytes(12 * 4 * KiB, 8), 4 * KiB)
    # This test's queue was declared a moment ago: let the node write its registry first,
    # or the killed node comes back unable to confirm anything (RabbitServer.persist).
    await asyncio.to_thread(backends.rabbit.persist)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        for i in range(4):  # one at a time, as one host sends: nothing lingers
            status, _, raw, took = await up.send(http, i, lingering.url)
            assert status == 200, raw
            assert took < 1.5, f"block {i} waited {took:.2f} s"
        metrics = await scrape(lingering.url)
        assert metrics["carve_publish_batch_blocks_count"] == 4
        assert metrics["carve_publish_lingered_total"] == 0
        # A frozen broker: block 4's message awaits its confirm, so 5-7 wait for company.
        assert backends.rabbit.proc is not None
        broker = backends.rabbit.proc.pid
        os.killpg(broker, signal.SIGSTOP)
        try:
            in_flight = asyncio.create_task(up.send(http, 4, lingering.url))
            await asyncio.sleep(0.2)
            waiting = [asyncio.create_task(up.send(http, i, lingering.url)) for i in range(5, 8)]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in [in_flight, *waiting])
            assert (await scrape(lingering.url))["carve_publish_lingered_total"] == 1
            backends.rabbit.stop(signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(broker, signal.SIGCONT)
        try:
            for status, ctype, raw, took in await asyncio.gather(in_flight, *waiting):
                assert (status, ctype) == (503, "text/plain"), raw
                assert raw.startswith(b"service unavailable: rabbitmq"), raw
                assert took < 4.0
        finally:
            backends.rabbit.start()
        metrics = await scrape(lingering.url)
        assert metrics['carve_blocks_total{outcome="accepted"}'] == 4
        # The failed blocks were not recorded: sent again, each is stored, none a duplicate.
        assert await send_until_taken(http, up, 4) == up.count
        ingest = await scrape(stack.ingest_url)
        assert ingest['carve_blocks_total{outcome="accepted"}'] == up.count - 4
        assert ingest.get('carve_blocks_total{outcome="duplicate"}', 0) == 0
    await stack.start_assembler()
    await assert_complete(stack, up)


async def test_killed_broker_confirms_again_once_its_queue_registry_is_on_disk(
    backends: Backends, names: dict[str, str]
) -> None:
    """Why the drill above calls ``persist`` first. A quorum queue declared and used less
    than a few seconds before RabbitMQ is SIGKILLed comes back declared but unable to
    confirm anything (its Ra server's DETS registry was not saved yet): without
    ``persist`` this publish is never confirmed. With it, the node comes back whole."""
    queue = names["amqp_queue"] + ".drill"
    message = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    connection = await aio_pika.connect(backends.rabbit.url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.default_exchange.publish(message, routing_key=queue)
    await asyncio.to_thread(backends.rabbit.persist)
    backends.rabbit.stop(signal.SIGKILL)
    with contextlib.suppress(Exception):
        await connection.close()
    backends.rabbit.start()
    connection = await aio_pika.connect(backends.rabbit.url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        async with asyncio.timeout(15):
            await channel.default_exchange.publish(
                aio_pika.Message(b"after", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
                mandatory=True,
            )
        stored = await channel.declare_queue(queue, passive=True)
        bodies = []
        for _ in range(2):
            got = await stored.get(timeout=5)
            bodies.append(got.body)
            await got.ack()
        assert bodies == [b"kept", b"after"]
        await stored.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
