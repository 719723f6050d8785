"""A hostile enrolled host against the ingest: bounded cost per host and in total.

Each test plays the attack of issue "Hostile hosts" against a real ingest on the
session's Redis, RabbitMQ and SecantusDB, and checks what the attacker got (the
reply, and what osquery would make of it), what it cost (Redis memory), and
that an honest host next to it still carves.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from redis.asyncio import Redis

from clients.osquery_sim import (
    STATUS_SUCCESS,
    block_body,
    build_synthetic_archive,
    carve,
    judge_reply,
    start_body,
)
from devstack.services import scrape
from services.ingest.settings import IngestSettings
from services.janitor.main import run_sweep
from shared.quotas import Quotas, Refusal, session_bytes
from tests.stack import Stack, fields
from tests.uploads import Upload, random_bytes

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024


def archive_of(tmp_path: Path, size: int, seed: int) -> tuple[Path, str]:
    guid = str(uuid.uuid4())
    folder = tmp_path / guid
    folder.mkdir()
    return build_synthetic_archive(size, folder, carve_guid=guid, seed=seed), guid


async def host_carves(url: str, tmp_path: Path, node_key: str, seed: int = 0) -> Any:
    archive, guid = archive_of(tmp_path, 40 * KiB, seed)
    async with aiohttp.ClientSession() as http:
        return await carve(http, url, archive, node_key=node_key, carve_id=guid)


def start(node_key: str = "", **geometry: int) -> bytes:
    size = geometry.get("carve_size", 10 * KiB)
    block = geometry.get("block_size", 8 * KiB)
    return start_body(
        block_count=geometry.get("block_count", -(-size // block)),
        block_size=block,
        carve_size=size,
        carve_id=str(uuid.uuid4()),
        request_id=str(uuid.uuid4()),
        node_key=node_key,
    )


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
        ) as resp,
    ):
        raw = await resp.read()
        reply = judge_reply(resp.status, raw)
        assert reply.ok, f"osquery would retry this reply: {resp.status} {raw!r}"
        return resp.status, resp.content_type, json.loads(raw) if raw else {}


async def refused_start(url: str, body: bytes, status: int, code: str) -> None:
    """The start is refused the way osquery gives up at once: JSON, no session_id."""
    got, ctype, reply = await post(url + "/start_uploads", body)
    assert (got, ctype, reply.get("code")) == (status, "application/json", code), reply
    assert "session_id" not in reply and reply["error"]


async def used_memory(stack: Stack) -> int:
    redis = Redis.from_url(stack.env["CARVE_REDIS_URL"])
    try:
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


async def last_block(url: str, body: bytes, reply: dict[str, Any]) -> int:
    """Send the carve's highest block id (the bitmap's worst case); its HTTP status."""
    fields = json.loads(body)
    last = fields["block_count"] - 1
    size = fields["carve_size"] - last * fields["block_size"]
    data = block_body(last, reply["session_id"], fields["request_id"], b"x" * size)
    status, _, _ = await post(url + "/upload_blocks", data)
    return status


@pytest.mark.parametrize(
    ("geometry", "why"),
    [
        # 2^30 blocks of 64 bytes declare 64 GiB, under the size cap: a 128 MiB bitmap.
        ({"block_count": 2**30, "block_size": 64, "carve_size": 64 * GiB}, "block_size"),
        # 2^26 blocks of 1 KiB, also 64 GiB: an 8 MiB bitmap.
        ({"block_count": 2**26, "block_size": KiB, "carve_size": 64 * GiB}, "block_count"),
    ],
)
async def test_hostile_geometry_is_refused_and_costs_no_redis_memory(
    stack: Stack, geometry: dict[str, int], why: str
) -> None:
    before = await used_memory(stack)
    body = start("nk-attacker", **geometry)
    got, _, reply = await post(stack.ingest_url + "/start_uploads", body)
    if "session_id" in reply:  # accepted: what the attacker's highest block then costs
        await last_block(stack.ingest_url, body, reply)
    grown = await used_memory(stack) - before
    print(f"redis used_memory grew by {grown} bytes for {geometry}")
    assert (got, reply.get("code")) == (400, "invalid_request"), reply
    assert why in reply["error"]
    assert grown < 1 * MiB


async def test_largest_session_bitmap_is_a_small_constant(stack: Stack) -> None:
    """2^24 blocks (the cap) and the highest block first: the bitmap stops at 2 MiB."""
    before = await used_memory(stack)
    count = 2**24
    body = start(
        "nk-big", block_count=count, block_size=4 * KiB, carve_size=(count - 1) * 4 * KiB + 1
    )
    got, _, reply = await post(stack.ingest_url + "/start_uploads", body)
    assert got == 200 and reply["session_id"]
    assert await last_block(stack.ingest_url, body, reply) == 200
    grown = await used_memory(stack) - before
    print(f"redis used_memory grew by {grown} bytes for a 2^24-block session")
    assert 2 * MiB <= grown <= session_bytes(count) == 4 * MiB + 1024


async def test_fleet_bitmap_budget_bounds_redis_memory(stack: Stack) -> None:
    ingest = await stack.start_ingest(max_session_memory=9 * MiB)
    count = 2**24
    geometry = {
        "block_count": count,
        "block_size": 4 * KiB,
        "carve_size": (count - 1) * 4 * KiB + 1,
    }
    before = await used_memory(stack)
    for host in range(2):
        body = start(f"nk-host-{host}", **geometry)
        got, _, reply = await post(ingest.url + "/start_uploads", body)
        assert got == 200, reply
        assert await last_block(ingest.url, body, reply) == 200
    await refused_start(ingest.url, start("nk-host-3", **geometry), 429, "global_session_memory")
    grown = await used_memory(stack) - before
    print(f"redis used_memory grew by {grown} bytes with a 9 MiB session budget")
    assert grown < 9 * MiB
    # A small carve still fits in what is left.
    got, _, reply = await post(ingest.url + "/start_uploads", start("nk-host-4"))
    assert got == 200 and reply["session_id"]


async def test_one_host_gets_its_share_and_honest_hosts_carve_on(
    stack: Stack, tmp_path: Path
) -> None:
    """100 starts with one node key (20,000 in the attack): 8 receive, every other start gets
    a 429 naming the limit (8 receiving carves, then 30 starts a minute)."""
    url = stack.ingest_url + "/start_uploads"
    replies = await asyncio.gather(*(post(url, start("nk-attacker")) for _ in range(30)))
    replies += await asyncio.gather(*(post(url, start("nk-attacker")) for _ in range(70)))
    accepted = [r for _, _, r in replies if "session_id" in r]
    refused = [(status, r["code"]) for status, _, r in replies if "session_id" not in r]
    assert len(accepted) == 8
    assert refused == [(429, "host_active_carves")] * 22 + [(429, "host_start_rate")] * 70
    receiving = await stack.db["carves"].count_documents({"status": "receiving"})
    assert receiving == 8
    metrics = await scrape(stack.ingest_url)
    for reason, count in (("host_active_carves", 22), ("host_start_rate", 70)):
        assert (
            metrics[f'carve_rejections_total{{endpoint="start_uploads",reason="{reason}"}}']
            == count
        )
    result = await host_carves(stack.ingest_url, tmp_path, "nk-honest", seed=3)
    assert result.status == STATUS_SUCCESS, result
    doc = await stack.wait_complete(result.carve_id)
    assert doc["sha256"] == result.sha256


async def test_refused_start_fails_the_carve_on_the_host(stack: Stack, tmp_path: Path) -> None:
    ingest = await stack.start_ingest(max_active_carves_per_host=1)
    await post(ingest.url + "/start_uploads", start("nk-one"))
    result = await host_carves(ingest.url, tmp_path, "nk-one")
    assert result.start_failed and result.requests == 1


async def test_start_rate_per_host(stack: Stack) -> None:
    ingest = await stack.start_ingest(max_starts_per_host_per_minute=5)
    for _ in range(5):
        got, _, reply = await post(ingest.url + "/start_uploads", start("nk-fast"))
        assert got == 200, reply
    await refused_start(ingest.url, start("nk-fast"), 429, "host_start_rate")
    got, _, _ = await post(ingest.url + "/start_uploads", start("nk-other"))
    assert got == 200


async def test_declared_bytes_per_host_and_in_total(stack: Stack) -> None:
    ingest = await stack.start_ingest(
        max_inflight_bytes_per_host=10 * MiB, max_inflight_carve_bytes=20 * MiB
    )
    eight = {"carve_size": 8 * MiB, "block_size": MiB}
    assert (await post(ingest.url + "/start_uploads", start("nk-a", **eight)))[0] == 200
    await refused_start(ingest.url, start("nk-a", **eight), 429, "host_inflight_bytes")
    assert (await post(ingest.url + "/start_uploads", start("nk-b", **eight)))[0] == 200
    await refused_start(ingest.url, start("nk-c", **eight), 429, "global_inflight_bytes")


async def test_receiving_carves_in_total(stack: Stack) -> None:
    ingest = await stack.start_ingest(max_active_carves=3)
    for host in range(3):
        assert (await post(ingest.url + "/start_uploads", start(f"nk-{host}")))[0] == 200
    await refused_start(ingest.url, start("nk-9"), 429, "global_active_carves")


async def test_an_ended_carve_frees_its_share_at_once(stack: Stack, tmp_path: Path) -> None:
    ingest = await stack.start_ingest(max_active_carves_per_host=1, max_active_carves=1)
    for i in range(3):  # completed by the assembler, which never touches the shares
        result = await host_carves(ingest.url, tmp_path, "nk-seq", seed=i)
        assert result.status == STATUS_SUCCESS, result
        await stack.wait_complete(result.carve_id)
    # One left receiving, then failed by the janitor: the next start fits again.
    got, _, reply = await post(ingest.url + "/start_uploads", start("nk-seq"))
    assert got == 200
    await refused_start(ingest.url, start("nk-seq"), 429, "host_active_carves")
    janitor = await stack.start_janitor(session_idle_timeout=0.5, finalize_grace=0)
    await asyncio.sleep(0.6)
    report = await run_sweep(janitor.app)
    assert report.actions["failed"] == 1
    got, _, reply = await post(ingest.url + "/start_uploads", start("nk-seq"))
    assert got == 200 and reply["session_id"]


async def test_a_carve_id_taken_by_another_host_is_a_conflict_and_frees_nothing(
    stack: Stack,
) -> None:
    """Two starts of one carve id from two hosts racing past the document check: the second
    host gets no share, and giving its (non-)share back leaves the first host's counted."""
    ingest = await stack.start_ingest(max_active_carves=2)
    body = start("nk-a")
    assert (await post(ingest.url + "/start_uploads", body))[0] == 200
    carve_id = json.loads(body)["carve_id"]
    redis = Redis.from_url(stack.env["CARVE_REDIS_URL"])
    try:
        limits = IngestSettings(**fields(stack.env)).quota_limits()
        quotas = Quotas(redis, stack.env["CARVE_REDIS_KEY_PREFIX"], limits)
        assert await quotas.admit("nk:other-host", carve_id, 10 * KiB, 2) is Refusal.TAKEN
        assert await quotas.release("nk:other-host", [carve_id]) == 0
    finally:
        await redis.aclose()
    # Still one of two fleet-wide slots taken by A's carve: one more fits, then none.
    assert (await post(ingest.url + "/start_uploads", start("nk-c")))[0] == 200
    await refused_start(ingest.url, start("nk-d"), 429, "global_active_carves")


async def test_a_block_id_past_any_bitmap_gets_a_refusal_not_an_error(stack: Stack) -> None:
    """Redis refuses bit offsets from 2^32 on: the host still gets a clear text refusal."""
    body = start("nk-far")
    _, _, reply = await post(stack.ingest_url + "/start_uploads", body)
    fields = json.loads(body)
    for block_id in (2**32, 2**40):
        data = block_body(block_id, reply["session_id"], fields["request_id"], b"x" * 10)
        async with (
            aiohttp.ClientSession() as http,
            http.post(stack.ingest_url + "/upload_blocks", data=data) as resp,
        ):
            raw = await resp.read()
            assert (resp.status, resp.content_type) == (400, "text/plain"), raw
            assert b"out of range" in raw
            assert not judge_reply(resp.status, raw).ok  # osquery 5.22+ fails the carve


async def queued_messages(stack: Stack) -> int:
    connection = await aio_pika.connect(stack.env["CARVE_AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(stack.env["CARVE_AMQP_QUEUE"], passive=True)
        return int(queue.declaration_result.message_count or 0)


async def test_a_host_re_sending_a_stored_block_costs_a_lookup_not_a_publish(
    ingest_only: Stack,
) -> None:
    """A hostile host re-sends block 0 of its carve 200 times. Each is answered as osquery
    expects ({"success": true}), but past the session's duplicate budget (8) none goes
    through RabbitMQ again: without it, 200 more messages (8 MiB each at the largest
    block size) for the assemblers and MongoDB to throw away."""
    stack = ingest_only
    allowed = IngestSettings.model_fields["max_duplicates_per_session"].default
    up = Upload(stack, random_bytes(4 * 4 * KiB - 3, 31), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, [0, 1, 2])
        assert await queued_messages(stack) == 3
        for _ in range(200):
            status, ctype, raw, _ = await up.send(http, 0)
            assert (status, ctype, raw) == (200, "application/json", b'{"success":true}')
        assert await queued_messages(stack) == 3 + allowed
        metrics = await scrape(stack.ingest_url)
        assert metrics['carve_blocks_total{outcome="duplicate"}'] == 200
        assert metrics["carve_duplicates_unpublished_total"] == 200 - allowed
        await up.send_all(http, [3])  # the last block still goes through, and completes it
    assert await queued_messages(stack) == 3 + allowed + 2  # the block and its trigger
    await stack.start_assembler()
    doc = await stack.wait_complete(up.carve_id, timeout=30)
    assert doc["sha256"] == up.sha256 and doc["blocks_received"] == 4
    assert await stack.stored_sha256(up.carve_id) == up.sha256
