"""CarveReader: the one way every service reads a carve's stored chunks.

Block ``i`` of a carve is GridFS chunk ``n = i``; every chunk but the last is
``block_size`` bytes of plaintext. A chunk is stored either clear (exactly that long) or
sealed (``shared.crypto.chunks``: ``OVERHEAD`` bytes longer), so each chunk says which it
is by its length, and the carve document says which it may be:

- no ``encryption`` on the document: clear chunks (a carve stored before encryption);
- ``encryption.sealed == "all"``: sealed chunks only; a clear one is an integrity error
  (someone replaced it), never served;
- ``encryption.sealed == "partial"``: both (the carve was stored in part before the key
  existed, or ``carve-janitor encrypt`` is sealing it).

Chunks are fetched a window (``batch_bytes`` worth) per query, so no cursor stays open
while a slow consumer reads, and each is checked and opened before it is handed out. A
missing chunk or one of the wrong length is ``CorruptArchive``; one failing authentication
is ``ChunkIntegrityError`` (counted: ``carve_integrity_errors_total``); MongoDB away is
``Unavailable``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from shared.carves import CarveDoc, carves_of
from shared.crypto.chunks import OVERHEAD, VERSION, ChunkCipher, ChunkIntegrityError
from shared.crypto.keys import ALL, KeyRing
from shared.errors import CorruptArchive
from shared.mongo import Document, transient_on_outage
from shared.protocol import expected_block_length


class CarveReader:
    """A carve's chunks as plaintext, checked against its geometry and opened."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        bucket: str,
        doc: CarveDoc | Document,
        keys: KeyRing | None,
        cipher: ChunkCipher | None,
    ) -> None:
        self._db = db
        self._chunks = db[f"{bucket}.chunks"]
        self._keys = keys
        self._cipher = cipher
        self.carve_id: str = doc["_id"]
        self.size: int = doc["carve_size"]
        self.chunk_size: int = doc["block_size"]
        self.count = -(-self.size // self.chunk_size)
        sealing: dict[str, Any] = doc.get("encryption") or {}
        self._all_sealed = sealing.get("sealed") == ALL
        self.clear_chunks = 0  # clear chunks opened so far (mixed mode)

    @classmethod
    async def open(
        cls, db: AsyncDatabase[Document], bucket: str, doc: CarveDoc | Document,
        keys: KeyRing | None,
    ) -> CarveReader:  # fmt: skip
        """A reader of ``doc``'s carve; unwraps its data key (Transit, or the key cache)
        when it has one. KeyShredded when that key was destroyed."""
        cipher = await keys.for_reading(doc) if keys is not None else None
        return cls(db, bucket, doc, keys, cipher)

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    async def open_chunk(self, n: int, stored: bytes) -> bytes:
        """Chunk ``n``'s plaintext from its stored form, checked."""
        want = expected_block_length(n, self.count, self.chunk_size, self.size)
        if len(stored) == want + OVERHEAD and stored[:1] == bytes([VERSION]):
            if self._cipher is None:
                await self._late_key()
            assert self._cipher is not None
            try:
                return self._cipher.open(n, stored)
            except ChunkIntegrityError:
                self._integrity_error()
                raise
        if len(stored) == want:
            if self._all_sealed:
                self._integrity_error()
                raise ChunkIntegrityError(f"chunk {n} is clear in a carve sealed throughout")
            self.clear_chunks += 1
            return stored
        raise CorruptArchive(f"chunk {n} has {len(stored)} bytes, {want} expected")

    async def _late_key(self) -> None:
        """A sealed chunk in a carve whose document had no key when this reader started:
        ``carve-janitor encrypt`` sealed it meanwhile. Read the key now (once)."""
        with transient_on_outage("carve key lookup"):
            doc = await carves_of(self._db).find_one({"_id": self.carve_id}, {"encryption": 1})
        if doc is not None and self._keys is not None and doc.get("encryption"):
            self._cipher = await self._keys.for_reading(doc)
        if self._cipher is None:
            self._integrity_error()
            raise ChunkIntegrityError("a sealed chunk in a carve that has no key")

    def _integrity_error(self) -> None:
        if self._keys is not None:
            self._keys.integrity_error()

    async def window(self, start: int, stop: int) -> list[bytes]:
        """Chunks ``start .. stop-1`` in one query, each checked and opened."""
        query = {"files_id": self.carve_id, "n": {"$gte": start, "$lt": stop}}
        with transient_on_outage("chunk read"):
            docs = await self._chunks.find(query, {"_id": 0}).sort("n", 1).to_list()
        if [doc["n"] for doc in docs] != list(range(start, stop)):
            raise CorruptArchive(f"chunks missing in {start}..{stop - 1}")
        datas: list[bytes] = []
        for doc in docs:
            datas.append(await self.open_chunk(doc["n"], doc["data"]))
            doc["data"] = b""  # one copy of each chunk at a time
        return datas

    async def chunks(self, *, batch_bytes: int, first: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        """``(n, plaintext)`` for every chunk from ``first`` on, in order."""
        window = max(1, batch_bytes // self.chunk_size)
        for start in range(first, self.count, window):
            stop = min(start + window, self.count)
            datas = await self.window(start, stop)
            for n in range(start, stop):
                data, datas[n - start] = datas[n - start], b""
                yield n, data
