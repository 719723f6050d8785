"""Writing blocks as GridFS chunks, many per round trip, sealed when encryption is on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from shared.batching import Coalescer
from shared.carves import Status, carves_of
from shared.crypto.keys import KeyRing
from shared.errors import PoisonMessage, Unavailable
from shared.mongo import Document, is_document_error, transient_on_outage

_DUPLICATE_KEY = 11000
# Chunks this big go without lingering: a round trip is then worth it on its own (and with
# 8 MiB blocks the prefetch is 1, so no company could come).
LINGER_BELOW = 256 * 1024


class GridChunkStore:
    """Block i of a carve is chunk n = i of the GridFS file whose _id is the carve_id.

    Concurrent writes are coalesced into one unordered ``insert_many`` (waiting up to
    ``linger`` for company, so the single-block messages of one host share it): the
    unique (files_id, n) index still rejects each duplicate on its own, so
    batching keeps every write idempotent.
    """

    def __init__(
        self,
        db: AsyncDatabase[Document],
        bucket: str,
        *,
        batch: int = 64,
        batch_bytes: int = 8 * 1024 * 1024,
        keys: KeyRing | None = None,
        linger: float = 0.0,
    ) -> None:
        self._keys = keys if keys is not None and keys.encrypting else None
        self._chunks = db[f"{bucket}.chunks"]
        self._carves = carves_of(db)
        self._inserts: Coalescer[Document, bool] = Coalescer(
            self._insert_many,
            batch,
            weight=lambda doc: len(doc["data"]),
            max_weight=batch_bytes,
            linger=linger,
            linger_below=LINGER_BELOW,
        )

    async def put_chunk(self, carve_id: str, n: int, data: bytes) -> bool:
        """Store a chunk; False when it was already there (the unique index said so), or,
        with encryption on, when its carve no longer receives (a late block: dropped).

        Sealed with the carve's data key (created with the carve's first sealed chunk); Vault
        unreachable is Unavailable: the block stays queued, nothing is stored in the clear."""
        if self._keys is not None:
            cipher = await self._keys.for_writing(carve_id)
            if cipher is None:
                return False
            data = cipher.seal(n, data)
        # bytes are stored as BSON binary as they are; Binary(data) would copy every chunk.
        return await self._inserts.submit({"files_id": carve_id, "n": n, "data": data})

    async def _insert_many(self, docs: Sequence[Document]) -> list[bool | BaseException]:
        with transient_on_outage("chunk write"):
            try:
                await self._chunks.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return insert_results(len(docs), exc.details)
        return [True] * len(docs)

    async def add_received(self, counts: dict[str, int]) -> None:
        """Add to the progress counters of receiving carves (one update per carve)."""
        with transient_on_outage("progress update"):
            for carve_id, k in counts.items():
                await self._carves.update_one(
                    {"_id": carve_id, "status": Status.RECEIVING.value},
                    {"$inc": {"blocks_received": k}, "$currentDate": {"updated_at": True}},
                )


def insert_results(count: int, details: Mapping[str, Any]) -> list[bool | BaseException]:
    """What a failed ``insert_many`` of ``count`` chunks means for each: stored (True),
    there already (False), or an error, from the bulk write's error ``details``.

    A write concern error means the chunks are on the primary but a majority did not
    acknowledge them in time: a failover could still roll them back, so none counts as
    stored; the message is kept and written again (then a duplicate, acknowledged by a
    majority or not at all)."""
    results: list[bool | BaseException] = [True] * count
    for error in details.get("writeErrors", []):
        results[error["index"]] = classify_write_error(error)
    if details.get("writeConcernErrors"):
        unsure = Unavailable("MongoDB", "chunk write not acknowledged by a majority in time")
        results = [r if isinstance(r, PoisonMessage) else unsure for r in results]
    return results


def classify_write_error(error: Document) -> bool | BaseException:
    """What one failed insert of a batch means: duplicate, bad chunk, or retry later."""
    code = error.get("code")
    if code == _DUPLICATE_KEY:
        return False
    if is_document_error(code):
        return PoisonMessage(f"chunk write refused: {error.get('errmsg')}")
    return Unavailable("MongoDB", f"chunk write failed: {code} {error.get('errmsg')}")
