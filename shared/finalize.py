"""Finalizing a carve: exactly once, after every chunk is in GridFS.

Used by the assembler (when the last block lands) and by the janitor (when an
assembler died mid-way). Steps, each safe to repeat:

1. count the carve's chunks in MongoDB (the source of truth, not a counter);
2. take a lease on the carve document (``find_one_and_update`` on a
   condition, so of several racing finalizers exactly one proceeds; a lease
   left by a crashed finalizer expires and is taken over). The holder renews
   it every third of its length from a task of its own, whatever the reads
   cost, so the lease can be short (a crashed finalizer delays the carve by
   at most that long) and a live one keeps it. Should a stalled one lose it
   anyway, two finalizers compute the same result and only the holder's
   final write lands;
3. stream the chunks in order, checking each one's length, hashing them
   (memory: one cursor batch, a few MiB at most); a chunk that does not
   fit marks the carve failed as corrupt;
4. write the GridFS files document (a duplicate from an earlier, interrupted
   attempt is fine: same content);
5. mark the carve complete, only if the lease is still ours.

Step 3 also reads the tar on the same pass and stores its manifest (``shared.manifest``):
every member with its SHA-256, bounded; an unreadable archive still completes, with the
reason in the manifest's ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, cast

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DocumentTooLarge, DuplicateKeyError

from shared.carves import ENDED, CarveDoc, Compression, Status, archive_filename, carves_of
from shared.crypto.keys import KeyRing
from shared.crypto.reader import CarveReader
from shared.errors import CorruptArchive
from shared.events import EventType, carve_summary, event_entry, push_event
from shared.events.outbox import Notifier, announce
from shared.manifest import COLLECTION as MANIFESTS
from shared.manifest import ManifestPass
from shared.manifest import summary as manifest_summary
from shared.mongo import Document, transient_on_outage
from shared.protocol import ZSTD_MAGIC, expected_block_length
from shared.search import display_host, search_terms

log = logging.getLogger(__name__)

# A cursor batch holds about this many bytes of chunks.
_BATCH_BYTES = 4 * 1024 * 1024


class Outcome(StrEnum):
    FINALIZED = "finalized"
    NOT_READY = "not_ready"  # chunks still missing
    BUSY = "busy"  # another finalizer holds the lease
    NOT_RECEIVING = "not_receiving"  # complete, failed, expired, deleted, or unknown
    CORRUPT = "corrupt"  # stored chunks do not match the carve's geometry: marked failed


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    chunks: int = 0
    sha256: str | None = None


def files_doc(
    carve: CarveDoc, *, filename: str, sha256: str, compression: Compression, now: datetime
) -> Document:
    """The GridFS files document of a finalized carve (its chunks are already stored)."""
    return {
        "_id": carve["_id"],
        "length": carve["carve_size"],
        "chunkSize": carve["block_size"],
        "uploadDate": now,
        "filename": filename,
        "metadata": {"sha256": sha256, "compression": compression.value},
    }


class CarveFinalizer(Protocol):
    """What the assembler and the janitor need of a finalizer (Finalizer, or the
    assembler's TimedFinalizer around it; fakes in unit tests)."""

    async def maybe_finalize(self, carve_id: str) -> Result: ...


class Finalizer:
    """Finalizes carves stored in ``db`` under GridFS bucket ``bucket``."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        bucket: str,
        *,
        owner: str,
        lease_seconds: float = 6.0,
        concurrency: int = 2,
        manifests: bool = True,
        events: Notifier | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self._db, self._bucket, self._keys = db, bucket, keys
        self._carves = carves_of(db)
        self._files = db[f"{bucket}.files"]
        self._chunks = db[f"{bucket}.chunks"]
        self._manifests = manifests
        self._events = events
        self._manifest_rows = db[MANIFESTS]
        self._owner = owner
        self._lease = timedelta(seconds=lease_seconds)
        # Hashing streams a carve back from MongoDB: a few at a time per process keeps
        # memory (one cursor batch each) and MongoDB's read load bounded.
        self._slots = asyncio.Semaphore(concurrency)

    async def maybe_finalize(self, carve_id: str) -> Result:
        """Finalize ``carve_id`` if all its chunks are present and nobody else is at it."""
        with transient_on_outage("finalize"):
            doc = await self._carves.find_one({"_id": carve_id})
            if doc is None or doc["status"] != Status.RECEIVING:
                return Result(Outcome.NOT_RECEIVING)
            count = await self._chunks.count_documents({"files_id": carve_id})
            if count < doc["block_count"]:
                # The assemblers' counter can fall short after a crash: keep the exact count
                # beside it (adding it in would count the same chunks twice).
                await self._carves.update_one(
                    {"_id": carve_id}, {"$max": {"chunks_counted": count}}
                )
                return Result(Outcome.NOT_READY, chunks=count)
            async with self._slots:
                # One token per attempt, not per process: two attempts in the same
                # process (the last block and the idle re-check) must exclude each other too.
                token = f"{self._owner}:{secrets.token_hex(6)}"
                if not await self._claim(carve_id, token):
                    return Result(Outcome.BUSY, chunks=count)
                return await self._finish(doc, token)

    async def _claim(self, carve_id: str, token: str) -> bool:
        now = datetime.now(UTC)
        claimed = await self._carves.find_one_and_update(
            {
                "_id": carve_id,
                "status": Status.RECEIVING.value,
                "$or": [{"finalize_lease": None}, {"finalize_lease.until": {"$lt": now}}],
            },
            {"$set": {"finalize_lease": {"owner": token, "until": now + self._lease}}},
            return_document=ReturnDocument.AFTER,
        )
        return claimed is not None

    async def _renew(self, carve_id: str, token: str) -> None:
        until = datetime.now(UTC) + self._lease
        await self._carves.update_one(
            {"_id": carve_id, "finalize_lease.owner": token},
            {"$set": {"finalize_lease.until": until}},
        )

    async def _keep_lease(self, carve_id: str, token: str) -> None:
        """Renew the lease every third of its length until cancelled (a failed renewal is
        tried again at the next beat)."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                await self._renew(carve_id, token)
            except Exception as exc:  # never let the keeper's failure replace the result
                log.warning("carve %s: lease not renewed: %s", carve_id, exc.__class__.__name__)

    async def _finish(self, doc: CarveDoc, token: str) -> Result:
        started = time.monotonic()
        carve_id: str = doc["_id"]
        keeper = asyncio.create_task(self._keep_lease(carve_id, token), name="finalize-lease")
        try:
            return await self._finish_holding(doc, token, started)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _finish_holding(self, doc: CarveDoc, token: str, started: float) -> Result:
        carve_id: str = doc["_id"]
        try:
            sha256, compression, manifest, sealed = await self._hash_chunks(doc)
        except CorruptArchive as exc:
            log.error("carve %s cannot be finalized: %s", carve_id, exc)
            now = datetime.now(UTC)
            failed = {
                "status": Status.FAILED.value,
                "failure_reason": f"corrupt: {exc}",
                "failed_at": now,
                "updated_at": now,
            }
            event = event_entry(
                EventType.FAILED, carve_summary(cast(CarveDoc, {**doc, **failed})), now
            )
            changed = await self._carves.update_one(
                {
                    "_id": carve_id,
                    "status": Status.RECEIVING.value,  # never over a tombstone (deleted meanwhile)
                    "finalize_lease.owner": token,
                },
                push_event(
                    {"$set": failed, "$unset": {"finalize_lease": "", "session_id": ""}}, event
                ),
            )
            if changed.modified_count:
                announce(self._events, carve_id)
            return Result(Outcome.CORRUPT)
        filename = archive_filename(carve_id, compression)
        now = datetime.now(UTC)
        try:
            await self._files.insert_one(
                files_doc(doc, filename=filename, sha256=sha256, compression=compression, now=now)
            )
        except DuplicateKeyError:
            log.info("carve %s: files document already written by an earlier attempt", carve_id)
        manifest_fields = await self._store_manifest(doc, manifest)
        complete = {
            "status": Status.COMPLETE.value,
            "sha256": sha256,
            "compression": compression.value,
            "filename": filename,
            "blocks_received": doc["block_count"],
            "completed_at": now,
            "updated_at": now,
            **manifest_fields,
            # Every chunk was sealed: from now on a clear one is an integrity error.
            **({"encryption.sealed": "all"} if sealed else {}),
        }
        event = event_entry(
            EventType.COMPLETED, carve_summary(cast(CarveDoc, {**doc, **complete})), now
        )
        done = await self._carves.update_one(
            {
                "_id": carve_id,
                "status": Status.RECEIVING.value,
                "finalize_lease.owner": token,
            },
            push_event(
                {"$set": complete, "$unset": {"finalize_lease": "", "session_id": ""}}, event
            ),
        )
        if done.modified_count != 1:
            # Our lease expired and another finalizer took over (it writes the same result),
            # or the carve was deleted meanwhile: then the files document must not outlive it.
            current = await self._carves.find_one({"_id": carve_id}, {"status": 1})
            if current is None or current["status"] in ENDED:
                await self._files.delete_one({"_id": carve_id})
                await self._manifest_rows.delete_one({"_id": carve_id})
            return Result(Outcome.BUSY)
        announce(self._events, carve_id)
        log.info(
            "carve %s finalized: %d bytes in %d chunks, sha256 %s, %.3f s",
            carve_id,
            doc["carve_size"],
            doc["block_count"],
            sha256,
            time.monotonic() - started,
        )
        return Result(Outcome.FINALIZED, chunks=doc["block_count"], sha256=sha256)

    async def _store_manifest(
        self, doc: CarveDoc, manifest: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Store the manifest (replacing one of an earlier attempt); the carve's summary field
        and its search terms (``shared.search``: its host and carved paths)."""
        carve_id = doc["_id"]
        if manifest is None:
            return {}
        row = {k: v for k, v in manifest.items() if k != "count"}  # members, truncated, error...
        try:
            await self._manifest_rows.replace_one(
                {"_id": carve_id}, {**row, "built_at": datetime.now(UTC)}, upsert=True
            )
        except DocumentTooLarge:
            # Never let a manifest keep its carve from completing: keep that it is missing.
            manifest = {**manifest, "members": [], "truncated": True, "reason": "too_large",
                        "error": "too_large: the manifest does not fit one document"}  # fmt: skip
            row = {k: v for k, v in manifest.items() if k != "count"}
            await self._manifest_rows.replace_one(
                {"_id": carve_id}, {**row, "built_at": datetime.now(UTC)}, upsert=True
            )
        if manifest["error"]:
            log.warning("carve %s: archive not fully readable: %s", carve_id, manifest["error"])
        brief = manifest_summary(manifest)
        terms = search_terms(display_host(doc), brief["paths"])
        return {"manifest": brief, "search": terms}

    async def _hash_chunks(
        self, doc: CarveDoc
    ) -> tuple[str, Compression, dict[str, Any] | None, bool]:
        """SHA-256, compression and manifest of the plaintext, and whether every chunk of
        the carve is stored sealed."""
        carve_id = doc["_id"]
        count, size, length = doc["block_count"], doc["block_size"], doc["carve_size"]
        digest = hashlib.sha256()
        # Opens sealed chunks: the SHA-256 and the manifest are those of the plaintext.
        reader = await CarveReader.open(self._db, self._bucket, doc, self._keys)
        compression = Compression.NONE
        manifest: ManifestPass | None = None  # the tar read on this same pass (shared.manifest)
        expected_n = 0
        cursor = (
            self._chunks.find({"files_id": carve_id}, {"n": 1, "data": 1, "_id": 0})
            .sort("n", 1)
            .batch_size(max(1, _BATCH_BYTES // size))
        )
        try:
            async for chunk in cursor:
                n, stored = chunk["n"], bytes(chunk["data"])
                if n != expected_n or not 0 <= n < count:
                    want = expected_block_length(expected_n, count, size, length)
                    raise CorruptArchive(
                        f"chunk {n} (len {len(stored)}) where chunk {expected_n} "
                        f"of {want} bytes was expected"
                    )
                data = await reader.open_chunk(n, stored)
                if n == 0 and data.startswith(ZSTD_MAGIC):
                    compression = Compression.ZSTD
                if n == 0 and self._manifests:
                    manifest = ManifestPass(compression is Compression.ZSTD, length)
                digest.update(data)
                if manifest is not None:
                    await manifest.feed(data)
                expected_n += 1
            if expected_n != count:
                raise CorruptArchive(f"{expected_n} chunks streamed, {count} expected")
            # Inside the try: cancelled while handing over the end, the walker is abandoned
            # instead of waiting forever for it (a thread held until the process exits).
            built = await manifest.finish() if manifest is not None else None
        except BaseException:
            if manifest is not None:
                manifest.abandon()
            raise
        sealed = reader.encrypted and reader.clear_chunks == 0
        return digest.hexdigest(), compression, built, sealed
