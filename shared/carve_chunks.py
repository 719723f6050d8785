"""A complete carve's stored chunks, in order, each checked: how triage reads an archive.

Block ``i`` is GridFS chunk ``n = i``, every chunk but the last ``block_size`` long. Chunks
are fetched a window (``batch_bytes`` worth) per query, so no cursor stays open while a slow
consumer (a scan) reads, and memory holds one window. A missing chunk or one of the wrong
length is ``CorruptArchive``; MongoDB away is ``Unavailable``.

Same shape as ``CarveReader.chunks()`` of the encryption-at-rest work (``shared.carve_reader``,
which also opens sealed chunks): when both are on one branch, this function becomes
``(await CarveReader.open(db, bucket, doc, keys, batch_bytes=...)).chunks()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import CarveDoc
from shared.errors import CorruptArchive
from shared.mongo import Document, transient_on_outage
from shared.protocol import expected_block_length


async def plaintext_chunks(
    db: AsyncDatabase[Document], bucket: str, doc: CarveDoc, *, batch_bytes: int
) -> AsyncIterator[tuple[int, bytes]]:
    """``(n, data)`` for every chunk of ``doc``'s archive, in order."""
    chunks = db[f"{bucket}.chunks"]
    carve_id, size, chunk_size = doc["_id"], doc["carve_size"], doc["block_size"]
    count = -(-size // chunk_size)
    window = max(1, batch_bytes // chunk_size)
    for first in range(0, count, window):
        stop = min(first + window, count)
        query = {"files_id": carve_id, "n": {"$gte": first, "$lt": stop}}
        with transient_on_outage("chunk read"):
            docs = await chunks.find(query, {"_id": 0}).sort("n", 1).to_list()
        if [d["n"] for d in docs] != list(range(first, stop)):
            raise CorruptArchive(f"chunks missing in {first}..{stop - 1}")
        for found in docs:
            n, data = found["n"], found["data"]
            want = expected_block_length(n, count, chunk_size, size)
            if len(data) != want:
                raise CorruptArchive(f"chunk {n} has {len(data)} bytes, {want} expected")
            yield n, bytes(data)
