"""The ingest's session store against real Redis and SecantusDB: marks of concurrent requests
share one script call, and each caller still gets its own answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from devstack.backends import Backends
from services.ingest.sessions import Marked, SessionStore
from shared.carves import carves_of
from shared.errors import InvalidRequest, UnknownSession
from shared.lifecycle import session_keys
from shared.mongo import Document
from shared.protocol import StartRequest


class CountingRedis(Redis):
    """Redis that counts the script calls it sends (EVALSHA / EVAL)."""

    scripts = 0

    async def execute_command(self, *args: object, **options: object) -> object:
        if args and str(args[0]).upper() in {"EVALSHA", "EVAL"}:
            self.scripts += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


@pytest.fixture
async def store(
    backends: Backends, names: dict[str, str]
) -> AsyncIterator[tuple[SessionStore, CountingRedis]]:
    redis = cast(CountingRedis, CountingRedis.from_url(backends.redis.url))
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(backends.mongo.url)
    db = mongo[names["mongo_db"]]
    try:
        yield SessionStore(redis, carves_of(db), prefix=names["redis_key_prefix"], ttl=60), redis
    finally:
        await mongo.drop_database(db.name)
        await mongo.close()
        await redis.aclose()


def start(blocks: int = 100) -> StartRequest:
    return StartRequest(
        block_count=blocks,
        block_size=10,
        carve_size=blocks * 10,
        carve_id=uuid.uuid4().hex,
        request_id=str(uuid.uuid4()),
    )


async def test_concurrent_marks_share_round_trips_and_keep_their_answers(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    one, _ = await sessions.start(start())
    two, _ = await sessions.start(start())
    redis.scripts = 0
    # 40 blocks of two carves at once, block 7 of the first twice: one of those two is new.
    calls = [(one, n) for n in range(20)] + [(two, n) for n in range(20)] + [(one, 7)]
    fresh = await asyncio.gather(*(sessions.mark(s, n) for s, n in calls))
    # every block recorded once; the repeat is a duplicate
    assert sum(m is Marked.FRESH for m in fresh) == 40
    assert {fresh[7], fresh[40]} == {Marked.FRESH, Marked.DUPLICATE}
    # The first alone (nothing was in flight: it goes at once, inline), the 40 others in one
    # call, and one more when Redis had not loaded the script yet (NOSCRIPT, then again).
    assert redis.scripts <= 3, f"{redis.scripts} script calls for 41 concurrent marks"
    # What Redis holds: exactly blocks 0-19 of each session.
    for session_id in (one, two):
        bits = session_keys(sessions._prefix, session_id)[1]
        assert [await redis.getbit(bits, n) for n in range(22)] == [1] * 20 + [0, 0]
    assert await sessions.mark(one, 3) is Marked.DUPLICATE  # later repeats are duplicates too


async def test_a_gone_session_fails_only_its_own_callers(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    live, _ = await sessions.start(start())
    ended, _ = await sessions.start(start())
    # The janitor ended this carve: status first, then the Redis keys.
    await sessions._carves.update_one({"session_id": ended}, {"$set": {"status": "failed"}})
    await redis.delete(*session_keys(sessions._prefix, ended))
    results = await asyncio.gather(
        sessions.mark(live, 1), sessions.mark(ended, 1), sessions.mark(live, 2),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] is Marked.FRESH and results[2] is Marked.FRESH
    assert isinstance(results[1], UnknownSession)
    assert not await redis.exists(*session_keys(sessions._prefix, ended))


async def test_one_blocks_redis_error_fails_only_that_block(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    honest, _ = await sessions.start(start())
    odd, _ = await sessions.start(start())
    # A bitmap offset past 2^32 - 1 is refused by Redis; the ingest checks the block id
    # against the session before, this checks that a batch survives one bad item anyway.
    results = await asyncio.gather(
        sessions.mark(honest, 5), sessions.mark(odd, 2**32), return_exceptions=True
    )
    assert results[0] is Marked.FRESH
    assert isinstance(results[1], InvalidRequest)
    assert await redis.getbit(session_keys(sessions._prefix, honest)[1], 5) == 1


async def test_the_block_that_completes_the_set_owes_the_trigger_until_it_is_recorded(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    sid, _ = await sessions.start(start(blocks=3))
    # Last block first, as the scenario of issue 13; concurrent repeats count once.
    assert await sessions.mark(sid, 2) is Marked.FRESH
    assert list(await asyncio.gather(sessions.mark(sid, 1), sessions.mark(sid, 1))) in (
        [Marked.FRESH, Marked.DUPLICATE],
        [Marked.DUPLICATE, Marked.FRESH],
    )
    assert await sessions.mark(sid, 0) is Marked.COMPLETES
    # The trigger is not recorded yet (the ingest died before publishing it): a re-send of
    # any block is not "seen", and marking it again says the trigger is still owed.
    sessions._cache.clear()
    _, seen = await sessions.get(sid, 0)
    assert seen is False
    assert await sessions.mark(sid, 0) is Marked.COMPLETES
    await sessions.received(sid)
    sessions._cache.clear()
    _, seen = await sessions.get(sid, 0)
    assert seen is True
    assert await sessions.mark(sid, 1) is Marked.DUPLICATE
    meta = session_keys(sessions._prefix, sid)[0]
    assert await redis.hget(meta, "confirmed") == b"3"


async def test_a_rebuilt_session_never_claims_the_set_is_complete(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    sid, _ = await sessions.start(start(blocks=2))
    assert await sessions.mark(sid, 0) is Marked.FRESH
    await redis.delete(*session_keys(sessions._prefix, sid))  # Redis lost it
    sessions._cache.clear()
    # Rebuilt from MongoDB: its count starts again, so block 1 alone does not complete it.
    assert await sessions.mark(sid, 1) is Marked.FRESH


async def test_a_complete_carve_takes_re_sent_blocks_as_duplicates(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    sid, _ = await sessions.start(start(blocks=2))
    # Complete, and its Redis session removed by the janitor: a re-send after a lost reply.
    await sessions._carves.update_one({"session_id": sid}, {"$set": {"status": "complete"}})
    await redis.delete(*session_keys(sessions._prefix, sid))
    sessions._cache.clear()
    session, seen = await sessions.get(sid, 1)
    assert (session.block_count, seen) == (2, True)
    assert await sessions.mark(sid, 1) is Marked.DUPLICATE
    assert not await redis.exists(*session_keys(sessions._prefix, sid))  # not brought back


async def test_recording_the_trigger_never_brings_an_ended_session_back(
    store: tuple[SessionStore, CountingRedis],
) -> None:
    sessions, redis = store
    sid, _ = await sessions.start(start(blocks=1))
    assert await sessions.mark(sid, 0) is Marked.COMPLETES
    await redis.delete(*session_keys(sessions._prefix, sid))  # the janitor ended it meanwhile
    await sessions.received(sid)
    assert not await redis.exists(*session_keys(sessions._prefix, sid))
