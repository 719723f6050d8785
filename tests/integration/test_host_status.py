"""What the osquery host itself records matches what the server will do (issue 13, part 2).

The simulated host judges every reply as osquery does (``judge_reply``), so these
tests assert the host's own ``carves`` status: SUCCESS only when the server has or
will have the carve, DATA POST FAILED (5.22+) when it never will.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from redis.asyncio import Redis

from clients.osquery_sim import (
    STATUS_DATA_POST_FAILED,
    STATUS_SUCCESS,
    CarveResult,
    build_synthetic_archive,
    carve,
    judge_reply,
)
from shared.carves import Status, carves_of
from shared.events import EventType
from shared.lifecycle import end_session, transition
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

KiB = 1024
FAST = (0.01, 0.01)  # osquery sleeps 1 s and 4 s between attempts


def _ender(stack: Stack, carve_id: str, after_blocks: int) -> aiohttp.TraceConfig:
    """Ends the carve on the server, as the janitor does, once ``after_blocks`` were answered."""
    answered = 0

    async def on_request_end(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        nonlocal answered
        if params.url.path != "/upload_blocks":
            return
        answered += 1
        if answered != after_blocks:
            return
        now = datetime.now(UTC)
        fields = {"failure_reason": "ended by the test", "failed_at": now}
        carve = await carves_of(stack.db).find_one({"_id": carve_id})
        assert carve is not None
        doc = await transition(
            stack.db, carve, Status.FAILED, fields, now, event=EventType.FAILED, events=None
        )
        assert doc is not None
        async with Redis.from_url(stack.env["CARVE_REDIS_URL"]) as redis:
            await end_session(redis, stack.env["CARVE_REDIS_KEY_PREFIX"], doc)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace


async def _carve_ended_midway(
    stack: Stack, tmp_path: Path, version: tuple[int, int, int]
) -> tuple[int, CarveResult]:
    guid = str(uuid.uuid4())
    archive = build_synthetic_archive(40 * KiB, tmp_path, carve_guid=guid, seed=3)
    async with aiohttp.ClientSession(trace_configs=[_ender(stack, guid, after_blocks=4)]) as http:
        result = await carve(
            http,
            stack.ingest_url,
            archive,
            block_size=4 * KiB,
            carve_id=guid,
            version=version,
            retry_sleeps=FAST,
        )
    return -(-archive.stat().st_size // (4 * KiB)), result


async def test_a_522_host_whose_carve_ended_stops_and_reports_data_post_failed(
    stack: Stack, tmp_path: Path
) -> None:
    count, result = await _carve_ended_midway(stack, tmp_path, (5, 23, 0))
    assert count > 6
    # Block 4 is refused in text: three attempts, then the host gives up, sends no more.
    assert result.status == STATUS_DATA_POST_FAILED
    assert result.failed_blocks == [4]
    assert result.error_replies == []
    assert result.requests == 1 + 4 + 3
    doc = await stack.carve_doc(result.carve_id)
    assert doc is not None and doc["status"] == "failed"


async def test_a_521_host_skips_the_refused_blocks_and_still_says_success(
    stack: Stack, tmp_path: Path
) -> None:
    # osquery 5.21 and older log a failed block and go on: its table says SUCCESS whatever the
    # server answers. Documented (docs/osquery-protocol.md); the server's record is the truth.
    count, result = await _carve_ended_midway(stack, tmp_path, (5, 21, 0))
    assert result.status == STATUS_SUCCESS
    assert result.failed_blocks == list(range(4, count))
    assert result.requests == 1 + count
    doc = await stack.carve_doc(result.carve_id)
    assert doc is not None and doc["status"] == "failed"


async def test_a_block_re_sent_to_a_complete_carve_is_a_success(stack: Stack) -> None:
    up = Upload(stack, random_bytes(5 * 4 * KiB + 11, 9), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(up.count))
        await stack.wait_complete(up.carve_id, timeout=30)
        # The janitor removed the ended session from Redis; the host re-sends its last block
        # (the reply was lost) to a replica that never cached the session.
        async with Redis.from_url(stack.env["CARVE_REDIS_URL"]) as redis:
            prefix = stack.env["CARVE_REDIS_KEY_PREFIX"]
            carve = {"_id": up.carve_id, "session_id": up.session_id}
            assert await end_session(redis, prefix, carve) == 2
        other = await stack.start_ingest()
        for block_id in (up.count - 1, 0):
            status, ctype, raw, _ = await up.send(http, block_id, other.url)
            assert (status, ctype, raw) == (200, "application/json", b'{"success":true}')
            reply = judge_reply(status, raw)
            assert reply.ok and reply.payload == {"success": True}
        # A wrong block to that carve is still refused, and nothing changes.
        up.request_id = "not-the-request"
        status, ctype, raw, _ = await up.send(http, 0, other.url)
        assert (status, ctype) == (400, "text/plain"), raw
        assert not judge_reply(status, raw).ok
    doc = await stack.carve_doc(up.carve_id)
    assert doc is not None and doc["status"] == "complete" and doc["sha256"] == up.sha256
