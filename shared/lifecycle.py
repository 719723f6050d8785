"""Ending carves: state transitions, deleting their bytes in bounded batches, ending sessions.

Used by the janitor (idle, expiry, orphans) and by the download service
(deleting on purpose). Every step is safe to repeat and to run from two
processes at once: transitions are conditional updates on the current
status, and deletions of what is already gone delete nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from shared.carves import CarveDoc, Status, carves_of
from shared.events import EventType, carve_summary, event_entry, push_event
from shared.events.outbox import Notifier, announce
from shared.holds import FREE
from shared.manifest import COLLECTION as MANIFESTS
from shared.mongo import Document, transient_on_outage
from shared.protocol import expected_block_length
from shared.quotas import Quotas

log = logging.getLogger(__name__)


def session_keys(prefix: str, session_id: str) -> tuple[str, str]:
    """The Redis keys of an upload session: its hash and its block bitmap (see the ingest).

    The session id in braces is their hash tag: both keys live in one Redis Cluster slot,
    so the script that records a block touches one slot (docs/deployment.md, key layout)."""
    return f"{prefix}s:{{{session_id}}}", f"{prefix}b:{{{session_id}}}"


def session_hash_pattern(prefix: str) -> str:
    """A SCAN pattern matching every session hash (one per session)."""
    return session_keys(prefix, "*")[0]


def session_of(prefix: str, hash_key: str) -> str:
    """The session id of a session hash key."""
    return hash_key.removeprefix(f"{prefix}s:{{").removesuffix("}")


async def transition(
    db: AsyncDatabase[Document],
    doc: CarveDoc,
    to_status: Status,
    fields: dict[str, Any],
    now: datetime,
    *,
    event: EventType,
    events: Notifier | None,
    unless_finalizing: bool = False,
    unless_held: bool = False,
    where: Document | None = None,
) -> CarveDoc | None:
    """Move the carve ``doc`` describes from its status to ``to_status``, with ``event`` written
    in the same update (``shared.events.outbox``), or do nothing if it is no longer in that
    status; ``events`` (the relay) is told after the change.

    ``unless_finalizing``: also do nothing while a finalizer holds a live lease on
    it (it may be about to mark the carve complete). ``unless_held``: also do nothing while
    a legal hold stands on it (``shared.holds``: every transition that deletes bytes asks
    for this, in the same filter, so a hold placed a moment before always wins). Returns the
    document as it was before, when this call made the change. ``where``: more conditions
    the carve must meet, checked in the same filter (the janitor's "still due").
    """
    carve_id = doc["_id"]
    query: Document = {"_id": carve_id, "status": doc["status"]}
    if unless_finalizing:
        query["$or"] = [
            {"finalize_lease": None},
            {"finalize_lease.until": {"$lt": datetime.now(UTC)}},
        ]
    if unless_held:
        query.update(FREE)
    if where:
        query["$and"] = [where]
    change = {"status": to_status.value, "updated_at": now, **fields}
    entry = event_entry(event, carve_summary(cast(CarveDoc, {**doc, **change})), now)
    with transient_on_outage("carve transition"):
        before = await carves_of(db).find_one_and_update(
            query, push_event({"$set": change, "$unset": {"session_id": ""}}, entry)
        )
    if before is not None:
        announce(events, carve_id)
    return before


async def purge_archive(
    db: AsyncDatabase[Document], bucket: str, carve_id: str, *, batch: int, carve: CarveDoc | None
) -> tuple[int, int]:
    """Delete a carve's chunks, ``batch`` at a time, then its files document.

    Returns (chunks deleted, bytes freed). Bounded: each round trip deletes
    at most ``batch`` chunks, found by the (files_id, n) index, so a carve of
    millions of chunks never becomes one giant delete. Bytes are counted from
    the carve's geometry (every stored chunk was checked for its exact length
    on the way in); orphans without a carve document count chunks only.
    """
    chunks = db[f"{bucket}.chunks"]
    deleted = freed = 0
    with transient_on_outage("archive purge"):
        while True:
            cursor = chunks.find({"files_id": carve_id}, {"_id": 1, "n": 1}).sort("n", 1)
            found = [(doc["_id"], doc["n"]) async for doc in cursor.limit(batch)]
            if not found:
                break
            result = await chunks.delete_many({"_id": {"$in": [i for i, _ in found]}})
            deleted += result.deleted_count
            if carve is not None:
                freed += sum(_chunk_length(carve, n) for _, n in found)
        await db[f"{bucket}.files"].delete_one({"_id": carve_id})
        await db[MANIFESTS].delete_one({"_id": carve_id})  # its names went with the bytes
    return deleted, freed


def _chunk_length(carve: CarveDoc, n: int) -> int:
    count, size, length = carve["block_count"], carve["block_size"], carve["carve_size"]
    if 0 <= n < count:
        return expected_block_length(n, count, size, length)
    return 0


async def end_session(redis: Redis, prefix: str, carve: Mapping[str, Any]) -> int:
    """Remove an ended carve's upload session from Redis, so no replica takes its blocks,
    and give back the share of the service its host held for it (``shared.quotas``).

    ``carve``: its CarveDoc, or the part of it read here (``_id``, ``host``, ``session_id``)."""
    await Quotas(redis, prefix).release(carve.get("host") or "", [carve["_id"]])
    if not (session_id := carve.get("session_id")):
        return 0
    return int(await redis.delete(*session_keys(prefix, session_id)))
