"""Writing blocks as GridFS chunks."""

from __future__ import annotations

from bson.binary import Binary
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.carves import COLLECTION, Status
from shared.mongo import Document, transient_on_outage


class GridChunkStore:
    """Block i of a carve is chunk n = i of the GridFS file whose _id is the carve_id."""

    def __init__(self, db: AsyncDatabase[Document], bucket: str) -> None:
        self._chunks = db[f"{bucket}.chunks"]
        self._carves = db[COLLECTION]

    async def put_chunk(self, carve_id: str, n: int, data: bytes) -> bool:
        """Store a chunk; False when it was already there (the unique index said so)."""
        with transient_on_outage("chunk write"):
            try:
                await self._chunks.insert_one({"files_id": carve_id, "n": n, "data": Binary(data)})
            except DuplicateKeyError:
                return False
        return True

    async def count_received(self, carve_id: str) -> int | None:
        """Add one to the carve's progress counter; the new value, or None if not receiving."""
        with transient_on_outage("progress update"):
            doc = await self._carves.find_one_and_update(
                {"_id": carve_id, "status": Status.RECEIVING.value},
                {"$inc": {"blocks_received": 1}, "$currentDate": {"updated_at": True}},
                projection={"blocks_received": 1},
                return_document=ReturnDocument.AFTER,
            )
        return None if doc is None else int(doc["blocks_received"])
