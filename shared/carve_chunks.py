"""A complete carve's stored chunks, in order, each checked and opened: how triage reads an
archive (through ``shared.crypto.reader.CarveReader``, like every other reader).

Chunks are fetched a window (``batch_bytes`` worth) per query, so no cursor stays open while a
slow consumer (a scan) reads, and memory holds one window. A missing chunk or one of the wrong
length is ``CorruptArchive``, one failing authentication ``ChunkIntegrityError``; MongoDB or
Vault away is ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import CarveDoc
from shared.crypto.keys import KeyRing
from shared.crypto.reader import CarveReader
from shared.mongo import Document


async def plaintext_chunks(
    db: AsyncDatabase[Document],
    bucket: str,
    doc: CarveDoc,
    *,
    batch_bytes: int,
    keys: KeyRing | None = None,
) -> AsyncIterator[tuple[int, bytes]]:
    """``(n, data)`` for every chunk of ``doc``'s archive, in order."""
    reader = await CarveReader.open(db, bucket, doc, keys)
    async for n, data in reader.chunks(batch_bytes=batch_bytes):
        yield n, data
