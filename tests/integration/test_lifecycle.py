"""Carve lifecycle against the real servers: idle carves fail, retention expires, the janitor
recovers unfinished finalizations and cleans orphans, and never touches a carve still receiving."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from clients.osquery_sim import STATUS_DATA_POST_FAILED, build_synthetic_archive, carve
from devstack import ROOT
from devstack.backends import Backends
from devstack.services import scrape
from services.janitor.main import run_sweep
from services.janitor.sweep import Report
from tests.stack import RunningApp, Stack
from tests.uploads import Upload, random_bytes

KiB = 1024


def later(days: float) -> Any:
    """A janitor clock ``days`` ahead of the real one (no sleeping in tests)."""
    return lambda: datetime.now(UTC) + timedelta(days=days)


async def sweep(janitor: RunningApp, *, dry_run: bool = False) -> Report:
    return await run_sweep(janitor.app, dry_run=dry_run)


async def complete_upload(
    stack: Stack, http: aiohttp.ClientSession, size: int, seed: int
) -> Upload:
    upload = Upload(stack, random_bytes(size, seed), 4 * KiB)
    await upload.start(http)
    await upload.send_all(http, range(upload.count))
    await stack.wait_complete(upload.carve_id)
    return upload


def redis_of(stack: Stack) -> Redis:
    return Redis.from_url(stack.env["CARVE_REDIS_URL"])


async def session_keys(stack: Stack) -> set[bytes | str]:
    """The Redis keys of upload sessions (hash and bitmap), not the hosts' shares."""
    prefix = stack.env["CARVE_REDIS_KEY_PREFIX"]
    async with redis_of(stack) as redis:
        return set(await redis.keys(prefix + "s:*")) | set(await redis.keys(prefix + "b:*"))


async def test_host_stopping_halfway_fails_after_idle_timeout(stack: Stack) -> None:
    janitor = await stack.start_janitor(session_idle_timeout=1.0, finalize_grace=0)
    async with aiohttp.ClientSession() as http:
        upload = Upload(stack, random_bytes(10 * 4 * KiB, seed=1), 4 * KiB)
        await upload.start(http)
        await upload.send_all(http, [0, 1, 2, 5, 9])
        await stack.wait_for(upload.carve_id, lambda d: d["blocks_received"] == 5)
        # Not idle yet: nothing happens.
        report = await sweep(janitor)
        assert report.actions["failed"] == 0
        assert (await stack.carve_doc(upload.carve_id) or {})["status"] == "receiving"
        await asyncio.sleep(1.3)
        # The last block made the assembler count chunks; its running count was added later:
        # neither may count a chunk twice.
        assert (await stack.carve_doc(upload.carve_id) or {})["blocks_received"] == 5
        report = await sweep(janitor)
        assert report.actions["failed"] == 1
        doc = await stack.carve_doc(upload.carve_id)
        assert doc is not None
        assert doc["status"] == "failed"
        assert doc["blocks_received"] == 5
        assert "5 of 10 blocks" in doc["failure_reason"]
        assert doc["failed_at"] is not None
        assert await session_keys(stack) == set()  # the session is ended in Redis
        # The host comes back: refused, not in JSON (osquery retries twice and ends the carve
        # DATA POST FAILED), nothing stored.
        # (Through a replica that has not cached the session in the last 10 s, as every
        # replica after a real idle timeout of an hour.)
        other = await stack.start_ingest()
        status, content_type, body, _ = await upload.send(http, 3, other.url)
        assert (status, content_type) == (404, "text/plain")
        assert body == b"refused: unknown_session: unknown or ended session\n"
    assert await stack.chunk_count(upload.carve_id) == 5  # partial chunks kept for responders
    # After the failed retention (1 day), the partial chunks go; the document stays.
    report = await sweep(await stack.start_janitor(clock=later(2)))
    assert report.actions["failed_purged"] == 1
    assert report.bytes_freed == 5 * 4 * KiB
    doc = await stack.carve_doc(upload.carve_id)
    assert doc is not None and doc["status"] == "expired" and doc["expired_from"] == "failed"
    assert await stack.chunk_count(upload.carve_id) == 0


async def test_expiry_of_a_30_day_old_carve(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        upload = await complete_upload(stack, http, 5 * 4 * KiB + 100, seed=2)
    report = await sweep(await stack.start_janitor(clock=later(29)))
    assert report.actions["expired"] == 0
    assert await stack.chunk_count(upload.carve_id) == 6
    janitor = await stack.start_janitor(clock=later(31))
    report = await sweep(janitor)
    assert report.actions["expired"] == 1
    assert report.bytes_freed == len(upload.data)
    doc = await stack.carve_doc(upload.carve_id)
    assert doc is not None
    assert doc["status"] == "expired"
    assert doc["sha256"] == upload.sha256  # the tombstone keeps what the audit trail needs
    assert await stack.chunk_count(upload.carve_id) == 0
    assert await stack.db["archives.files"].count_documents({"_id": upload.carve_id}) == 0
    metrics = await scrape(janitor.url)
    assert metrics['carve_janitor_actions_total{action="expired"}'] == 1
    assert metrics["carve_janitor_bytes_freed_total"] == len(upload.data)
    # Sweeping again changes nothing.
    assert (await sweep(janitor)).actions["expired"] == 0


async def test_unfinished_finalization_is_recovered(ingest_only: Stack) -> None:
    stack = ingest_only
    data = random_bytes(7 * 4 * KiB + 9, seed=3)
    async with aiohttp.ClientSession() as http:
        upload = Upload(stack, data, 4 * KiB)
        await upload.start(http)
    # Every chunk is in GridFS, as an assembler leaves them if it dies before finalizing.
    chunks = [
        {"files_id": upload.carve_id, "n": i, "data": data[i * 4 * KiB : (i + 1) * 4 * KiB]}
        for i in range(upload.count)
    ]
    await stack.db["archives.chunks"].insert_many(chunks)
    report = await sweep(await stack.start_janitor(finalize_grace=0))
    assert report.actions["finalized"] == 1
    doc = await stack.wait_complete(upload.carve_id, timeout=1)
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert await stack.stored_sha256(upload.carve_id) == upload.sha256


async def test_orphan_chunks_and_ended_sessions_are_removed(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        done = await complete_upload(stack, http, 3 * 4 * KiB, seed=4)
        live = Upload(stack, random_bytes(3 * 4 * KiB, seed=5), 4 * KiB)
        await live.start(http)
        await live.send_all(http, [0])
    ghost = "ghost-" + uuid.uuid4().hex
    await stack.db["archives.chunks"].insert_many(
        [{"files_id": ghost, "n": n, "data": b"x" * 10} for n in range(3)]
    )
    prefix = stack.env["CARVE_REDIS_KEY_PREFIX"].encode()
    keys_before = await session_keys(stack)
    assert prefix + b"s:{" + done.session_id.encode() + b"}" in keys_before  # left by the ingest
    janitor = await stack.start_janitor(janitor_batch=2)  # pages smaller than the data
    report = await sweep(janitor)
    report2 = await sweep(janitor)  # the orphan scan resumes where the last one stopped
    assert report.actions["orphans_removed"] + report2.actions["orphans_removed"] == 1
    assert await stack.chunk_count(ghost) == 0
    assert await stack.chunk_count(done.carve_id) == 3  # complete carves keep their chunks
    assert await stack.chunk_count(live.carve_id) == 1
    assert report.actions["sessions_removed"] == 1
    assert await session_keys(stack) == {
        prefix + b"s:{" + live.session_id.encode() + b"}",
        prefix + b"b:{" + live.session_id.encode() + b"}",
    }


async def test_janitor_never_fails_a_carve_still_receiving(ingest_only: Stack) -> None:
    stack = ingest_only
    # No assembler during the upload: MongoDB shows no progress at all, only the ingest's
    # Redis session knows blocks keep coming. Hosts send a block every 0.25 s for 3 s, three
    # times the idle timeout, so every sweep after the first second sees carves whose
    # MongoDB documents have been untouched for longer than the timeout.
    janitor = await stack.start_janitor(session_idle_timeout=1.0, finalize_grace=0)
    uploads = [Upload(stack, random_bytes(12 * 4 * KiB, seed=50 + i), 4 * KiB) for i in range(3)]
    reports: list[Report] = []

    async def keep_sweeping() -> None:
        while True:
            reports.append(await sweep(janitor))
            await asyncio.sleep(0.1)

    async def slow_host(upload: Upload, http: aiohttp.ClientSession) -> None:
        await upload.start(http)
        for i in range(upload.count):
            status, _, body, _ = await upload.send(http, i)
            assert status == 200, body
            await asyncio.sleep(0.25)

    sweeper = asyncio.create_task(keep_sweeping())
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(slow_host(u, http) for u in uploads))
        await stack.start_assembler()
        for upload in uploads:
            doc = await stack.wait_complete(upload.carve_id)
            assert doc["sha256"] == upload.sha256
    finally:
        sweeper.cancel()
    assert len(reports) >= 10
    assert sum(r.actions["failed"] for r in reports) == 0


async def test_two_janitors_at_once_do_no_harm(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        uploads = [await complete_upload(stack, http, 2 * 4 * KiB, seed=10 + i) for i in range(3)]
    first = await stack.start_janitor(clock=later(31))
    second = await stack.start_janitor(clock=later(31))
    reports = await asyncio.gather(sweep(first), sweep(second))
    assert sum(r.actions["expired"] for r in reports) == 3  # each carve once
    for upload in uploads:
        doc = await stack.carve_doc(upload.carve_id)
        assert doc is not None and doc["status"] == "expired"
        assert await stack.chunk_count(upload.carve_id) == 0
    # With the lease released, the next sweep runs and finds nothing to do.
    again = await sweep(first)
    assert not again.skipped
    assert again.actions["expired"] == 0


async def test_dry_run_changes_nothing(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        upload = await complete_upload(stack, http, 2 * 4 * KiB, seed=20)
    await stack.db["archives.chunks"].insert_one({"files_id": "ghost", "n": 0, "data": b"x"})
    report = await sweep(await stack.start_janitor(clock=later(31)), dry_run=True)
    assert report.dry_run
    assert report.actions["expired"] == 1
    assert report.actions["orphans_removed"] == 1
    assert report.actions["sessions_removed"] == 1
    doc = await stack.carve_doc(upload.carve_id)
    assert doc is not None and doc["status"] == "complete"
    assert await stack.chunk_count(upload.carve_id) == 2
    assert await stack.chunk_count("ghost") == 1
    assert len(await session_keys(stack)) == 2


async def test_janitor_once_command(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        upload = await complete_upload(stack, http, 2 * 4 * KiB, seed=30)
    env = {**stack.env, "CARVE_RETENTION": "0.5", "PATH": str(Path(sys.executable).parent)}
    await asyncio.sleep(0.6)
    for args, status in ((["--dry-run"], "complete"), (["--once"], "expired")):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.janitor", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        summary = orjson.loads(done.stdout)
        assert summary["actions"]["expired"] == 1
        assert summary["dry_run"] is (args == ["--dry-run"])
        doc = await stack.carve_doc(upload.carve_id)
        assert doc is not None and doc["status"] == status
        assert b"janitor sweep" in done.stderr  # the summary log line


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
async def test_bad_janitor_settings_are_refused(stack: Stack, value: str) -> None:
    env = {**stack.env, "CARVE_RETENTION": value}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.janitor", "--once"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert b"retention" in done.stderr


async def test_rabbitmq_gone_past_the_retry_window_fails_visibly(
    stack: Stack, backends: Backends, tmp_path: Path
) -> None:
    """osquery 5.22+ tries a block 3 times over 5 s; RabbitMQ stays away longer."""
    archive = build_synthetic_archive(40 * KiB, tmp_path, carve_guid=str(uuid.uuid4()), seed=40)
    janitor = await stack.start_janitor(session_idle_timeout=1.0, finalize_grace=0)
    backends.rabbit.stop()
    try:
        async with aiohttp.ClientSession() as http:
            result = await carve(http, stack.ingest_url, archive, block_size=4 * KiB)
    finally:
        backends.rabbit.start()
    assert result.status == STATUS_DATA_POST_FAILED
    assert result.requests == 1 + 3  # the start, then three attempts at block 0
    await asyncio.sleep(1.2)
    report = await sweep(janitor)
    assert report.actions["failed"] == 1
    doc = await stack.carve_doc(result.carve_id)
    assert doc is not None and doc["status"] == "failed"
    assert f"0 of {result.block_count} blocks" in doc["failure_reason"]


async def test_janitor_loop_survives_a_redis_restart(stack: Stack, backends: Backends) -> None:
    janitor = await stack.start_janitor(loop=True, janitor_interval=0.2)

    async def count(outcome: str) -> float:
        return (await scrape(janitor.url)).get(
            f'carve_janitor_sweeps_total{{outcome="{outcome}"}}', 0.0
        )

    await wait_until(lambda: count("done"), 1)
    backends.redis.stop()
    try:
        await wait_until(lambda: count("error"), 1)
    finally:
        backends.redis.start()
    done = await count("done")
    await wait_until(lambda: count("done"), done + 2)  # the loop goes on after the outage
    async with aiohttp.ClientSession() as http, http.get(janitor.url + "/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["checks"]["sweeps"] == "ok"


async def wait_until(value: Any, at_least: float, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await value() >= at_least:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"value stayed below {at_least}")
