"""Carves from the osquery simulator to GridFS, checked byte for byte (SHA-256)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import aiohttp
import pytest

from clients.osquery_sim import (
    build_archive,
    build_synthetic_archive,
    carve,
    carve_many,
    request_headers,
    start_body,
)
from devstack.services import scrape
from shared.protocol import ZSTD_MAGIC
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

KiB = 1024
MiB = 1024 * KiB


def synthetic(tmp_path: Path, size: int, *, compress: bool = False, seed: int = 0) -> Path:
    guid = str(uuid.uuid4())
    return build_synthetic_archive(size, tmp_path, carve_guid=guid, compress=compress, seed=seed)


async def assert_stored(
    stack: Stack, carve_id: str, sha256: str, size: int, block_size: int
) -> None:
    doc = await stack.wait_complete(carve_id)
    blocks = -(-size // block_size)
    assert doc["sha256"] == sha256
    assert doc["carve_size"] == size
    assert doc["blocks_received"] == blocks
    assert await stack.chunk_count(carve_id) == blocks
    assert await stack.stored_sha256(carve_id) == sha256
    files = await stack.db["archives.files"].find_one({"_id": carve_id})
    assert files is not None
    assert (files["length"], files["chunkSize"]) == (size, block_size)
    assert doc["completed_at"] is not None and doc["completed_at"] >= doc["created_at"]


@pytest.mark.parametrize(("size", "block_size"), [(MiB + 777, 8 * KiB), (5 * MiB + 3, MiB)])
async def test_carve_lands_intact(stack: Stack, tmp_path: Path, size: int, block_size: int) -> None:
    archive = synthetic(tmp_path, size)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=block_size)
    assert result.ok, result
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == result.sha256
    await assert_stored(stack, result.carve_id, result.sha256, result.size, block_size)
    doc = await stack.carve_doc(result.carve_id)
    assert doc is not None
    assert doc["compression"] == "none"
    assert doc["filename"] == f"carve_{result.carve_id}.tar"


async def test_completed_carve_id_cannot_be_started_again(stack: Stack, tmp_path: Path) -> None:
    archive = synthetic(tmp_path, 20 * KiB)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=8 * KiB)
        await stack.wait_complete(result.carve_id)
        again = start_body(
            block_count=result.block_count,
            block_size=8 * KiB,
            carve_size=result.size,
            carve_id=result.carve_id,
            request_id=result.request_id,
            node_key="",
        )
        async with http.post(stack.ingest_url + "/start_uploads", data=again) as resp:
            assert resp.status == 409
            reply = await resp.json()
    assert reply["code"] == "conflict"
    assert "complete" in reply["error"]
    assert await stack.stored_sha256(result.carve_id) == result.sha256  # untouched


async def test_real_files_carve_and_zstd(stack: Stack, tmp_path: Path) -> None:
    guid = str(uuid.uuid4())
    members = {"/etc/hosts": Path("/etc/hosts").read_bytes(), "/var/log/app.log": b"line\n" * 5000}
    archive = build_archive(members, tmp_path, carve_guid=guid, compress=True)
    assert archive.read_bytes()[:4] == ZSTD_MAGIC
    async with aiohttp.ClientSession() as http:
        result = await carve(
            http,
            stack.ingest_url,
            archive,
            block_size=4 * KiB,
            carve_id=guid,
            start_endpoint="/api/v1/osquery/carve/begin",
            continue_endpoint="/api/v1/osquery/carve/block",
        )
    assert result.ok, result
    await assert_stored(stack, guid, result.sha256, result.size, 4 * KiB)
    doc = await stack.carve_doc(guid)
    assert doc is not None
    assert (doc["compression"], doc["filename"]) == ("zstd", f"carve_{guid}.tar.zst")


async def test_twenty_hosts_at_once(stack: Stack, tmp_path: Path) -> None:
    archives = [synthetic(tmp_path / str(i), 200 * KiB + i * 999, seed=i) for i in range(20)]
    results = await carve_many(stack.ingest_url, archives, block_size=8 * KiB)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert len({r.carve_id for r in results}) == 20
    for r in results:
        await assert_stored(stack, r.carve_id, r.sha256, r.size, 8 * KiB)


async def test_duplicated_blocks_stored_once(stack: Stack, tmp_path: Path) -> None:
    archive = synthetic(tmp_path, 100 * KiB + 5)
    n = -(-archive.stat().st_size // (8 * KiB))
    order = [0, 1, 1, 2, 0, *range(3, n), n - 1, 5, 5]
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=8 * KiB, block_order=order)
    assert result.ok, result
    await assert_stored(stack, result.carve_id, result.sha256, result.size, 8 * KiB)
    metrics = await scrape(stack.ingest_url)
    assert metrics['carve_blocks_total{outcome="duplicate"}'] == 5
    assert metrics['carve_blocks_total{outcome="accepted"}'] == n


async def test_reversed_blocks_over_two_ingest_processes(stack: Stack) -> None:
    ingest_a = await stack.spawn("ingest")
    ingest_b = await stack.spawn("ingest")
    up = Upload(stack, random_bytes(300 * KiB + 11, 1), 8 * KiB, node_key="node-1")
    async with aiohttp.ClientSession(headers=request_headers((5, 23, 0), "node-1")) as http:
        await up.start(http)
        for i in reversed(range(up.count)):
            status, _, raw, _ = await up.send(http, i, (ingest_a, ingest_b)[i % 2].url)
            assert status == 200, raw
    await assert_stored(stack, up.carve_id, up.sha256, len(up.data), up.block_size)


async def test_blocks_can_arrive_concurrently(stack: Stack) -> None:
    """A load balancer may deliver a re-sent block while the first copy is still in flight."""
    up = Upload(stack, random_bytes(64 * KiB + 5, 2), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        replies = await asyncio.gather(*(up.send(http, i % up.count) for i in range(3 * up.count)))
    assert {status for status, *_ in replies} == {200}
    await assert_stored(stack, up.carve_id, up.sha256, len(up.data), up.block_size)
    metrics = await scrape(stack.ingest_url)
    messages = metrics["carve_publish_batch_blocks_count"]
    blocks = metrics["carve_publish_batch_blocks_sum"]
    assert blocks >= up.count  # every block went out (duplicates may go again)
    assert messages < blocks  # concurrent blocks shared messages
