"""Sweep step 4: orphan chunks (no carve document, or a carve whose bytes are gone).

A slice of ``janitor_batch`` distinct carve ids found among the chunks per sweep, resuming
where the last sweep stopped (its position is kept in the janitor's ``locks`` collection)
and wrapping around once the end is reached.
"""

from __future__ import annotations

import collections

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.janitor.settings import JanitorSettings
from shared.carves import ENDED, carves_of
from shared.lifecycle import purge_archive
from shared.mongo import Document, transient_on_outage

ORPHAN_STATE = "janitor-orphan-scan"


class OrphanScan:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        settings: JanitorSettings,
        state: AsyncCollection[Document],
    ) -> None:
        self._db = db
        self._settings = settings
        self._state = state
        self._carves = carves_of(db)
        self._chunks = db[f"{settings.mongo_bucket}.chunks"]

    async def step(self, actions: collections.Counter[str], *, dry_run: bool) -> None:
        """Check the next ``janitor_batch`` distinct carve ids found among the chunks."""
        batch = self._settings.janitor_batch
        with transient_on_outage("janitor: orphans"):
            saved = await self._state.find_one({"_id": ORPHAN_STATE}) or {}
            after: str = saved.get("after", "")
            ids = await self._next_chunk_owners(after, batch)
            found = self._carves.find({"_id": {"$in": ids}}, {"status": 1})
            live = {d["_id"] async for d in found if d["status"] not in ENDED}
        for carve_id in ids:
            if carve_id in live:
                continue
            actions["orphans_removed"] += 1
            if not dry_run:
                deleted, _ = await purge_archive(
                    self._db, self._settings.mongo_bucket, carve_id, batch=batch, carve=None
                )
                actions["orphan_chunks"] += deleted
        if not dry_run:
            # Wrap around once the end is reached: the next sweep starts over.
            position = ids[-1] if len(ids) == batch else ""
            with transient_on_outage("janitor: orphans"):
                await self._state.update_one(
                    {"_id": ORPHAN_STATE}, {"$set": {"after": position}}, upsert=True
                )

    async def _next_chunk_owners(self, after: str, limit: int) -> list[str]:
        """Distinct files_id values after ``after``: one index seek each, no full scan."""
        owners: list[str] = []
        while len(owners) < limit:
            doc = await self._chunks.find_one(
                {"files_id": {"$gt": after}},
                {"files_id": 1, "_id": 0},
                sort=[("files_id", 1), ("n", 1)],
            )
            if doc is None:
                break
            after = doc["files_id"]
            owners.append(after)
        return owners
