"""Writing blocks as GridFS chunks, many per round trip."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bson.binary import Binary
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.assembler.batching import Coalescer
from shared.carves import COLLECTION, Status
from shared.errors import PoisonMessage
from shared.mongo import Document, transient_on_outage

_DUPLICATE_KEY = 11000


class GridChunkStore:
    """Block i of a carve is chunk n = i of the GridFS file whose _id is the carve_id.

    Concurrent writes are coalesced into one unordered ``insert_many``: the
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
    ) -> None:
        self._chunks = db[f"{bucket}.chunks"]
        self._carves = db[COLLECTION]
        self._inserts: Coalescer[Document, bool] = Coalescer(
            self._insert_many, batch, weight=lambda doc: len(doc["data"]), max_weight=batch_bytes
        )
        self._counts: Coalescer[str, int | None] = Coalescer(self._add_counts, batch)

    async def put_chunk(self, carve_id: str, n: int, data: bytes) -> bool:
        """Store a chunk; False when it was already there (the unique index said so)."""
        return await self._inserts.submit({"files_id": carve_id, "n": n, "data": Binary(data)})

    async def count_received(self, carve_id: str) -> int | None:
        """Add one to the carve's progress counter; the new value, or None if not receiving."""
        return await self._counts.submit(carve_id)

    async def _insert_many(self, docs: Sequence[Document]) -> list[bool | BaseException]:
        results: list[bool | BaseException] = [True] * len(docs)
        with transient_on_outage("chunk write"):
            try:
                await self._chunks.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                for error in exc.details.get("writeErrors", []):
                    index = error["index"]
                    if error.get("code") == _DUPLICATE_KEY:
                        results[index] = False
                    else:
                        results[index] = PoisonMessage(
                            f"chunk write refused: {error.get('errmsg')}"
                        )
        return results

    async def _add_counts(self, carve_ids: Sequence[str]) -> list[int | BaseException | None]:
        totals: dict[str, int | None] = {}
        with transient_on_outage("progress update"):
            for carve_id, k in Counter(carve_ids).items():
                doc = await self._carves.find_one_and_update(
                    {"_id": carve_id, "status": Status.RECEIVING.value},
                    {"$inc": {"blocks_received": k}, "$currentDate": {"updated_at": True}},
                    projection={"blocks_received": 1},
                    return_document=ReturnDocument.AFTER,
                )
                totals[carve_id] = None if doc is None else int(doc["blocks_received"])
        return [totals[c] for c in carve_ids]
