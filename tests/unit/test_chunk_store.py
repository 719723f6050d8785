"""GridChunkStore's write linger: one host's blocks (one per message, arriving one after the
other) share an insert_many; a big chunk goes at once. A fake collection stands in for
MongoDB: what is checked is how the writes are grouped, pure logic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from pymongo.asynchronous.database import AsyncDatabase

from services.assembler.store import LINGER_BELOW, GridChunkStore
from shared.mongo import Document


class FakeChunks:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def insert_many(self, docs: Sequence[Document], ordered: bool) -> None:
        assert ordered is False
        self.calls.append([doc["n"] for doc in docs])


class FakeDb:
    def __init__(self) -> None:
        self.chunks = FakeChunks()

    def __getitem__(self, name: str) -> Any:
        return self.chunks if name.endswith(".chunks") else None


def store(db: FakeDb, linger: float) -> GridChunkStore:
    return GridChunkStore(cast("AsyncDatabase[Document]", db), "fs", linger=linger)


async def test_blocks_arriving_one_after_another_share_one_write() -> None:
    db = FakeDb()
    chunks = store(db, linger=0.5)

    async def arrive(n: int) -> bool:
        await asyncio.sleep(0.005 * n)  # one delivery after another, as one host's
        return await chunks.put_chunk("c", n, bytes(8192))

    assert await asyncio.gather(*(arrive(n) for n in range(10))) == [True] * 10
    assert db.chunks.calls == [list(range(10))]


async def test_without_the_linger_each_block_is_its_own_write() -> None:
    db = FakeDb()
    chunks = store(db, linger=0.0)
    for n in range(3):
        assert await chunks.put_chunk("c", n, bytes(8192))
    assert db.chunks.calls == [[0], [1], [2]]


async def test_a_big_chunk_does_not_wait_for_company() -> None:
    db = FakeDb()
    chunks = store(db, linger=3600.0)  # an hour: a wait would show
    async with asyncio.timeout(10):
        assert await chunks.put_chunk("c", 0, bytes(LINGER_BELOW))
    assert db.chunks.calls == [[0]]
