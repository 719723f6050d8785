"""One janitor sweep, as small bounded steps.

1. receiving carves left alone for a while: finalize those whose chunks are
   all there (an assembler died at the wrong moment); fail those idle past
   ``CARVE_SESSION_IDLE_TIMEOUT`` with blocks missing;
2. failed carves past ``CARVE_FAILED_RETENTION``: delete their partial
   chunks, keep the document as an ``expired`` tombstone;
3. complete carves past ``CARVE_RETENTION``: the same;
4. orphan chunks (no carve document, or a carve whose bytes are gone): a
   slice of them per sweep, resuming where the last sweep stopped
   (``services.janitor.orphans``); then the Transit keys of deleted and expired
   carves are destroyed (crypto-shredding);
5. Redis sessions of carves that no longer receive;
6. carve events a dead process left in the outbox (``shared.events``).

Safe to repeat and to run twice at once: every transition is conditional on
the current status, deleting what is gone deletes nothing, and a lease in
MongoDB keeps a second janitor from doing the same work at the same time.
The policy clock (``clock``) is separate from the lease's wall clock, so tests
can move time forward without sleeping.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from services.janitor.orphans import OrphanScan
from services.janitor.settings import JanitorSettings
from shared.carves import ENDED, CarveDoc, Status, carves_of
from shared.crypto.keys import KeyRing
from shared.crypto.shred import shred_ended
from shared.errors import Unavailable
from shared.events import EventType
from shared.events.relay import Relay
from shared.finalize import CarveFinalizer, Outcome
from shared.holds import FREE
from shared.lifecycle import (
    end_session,
    purge_archive,
    session_hash_pattern,
    session_keys,
    session_of,
    transition,
)
from shared.mongo import Document, transient_on_outage
from shared.quotas import Quotas
from shared.redis_client import REDIS_OUTAGE, scan_keys
from shared.resources import AMQP_ERRORS

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
LOCKS = "locks"
LOCK_ID = "janitor"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Report:
    dry_run: bool
    actions: collections.Counter[str] = field(default_factory=collections.Counter)
    bytes_freed: int = 0
    seconds: float = 0.0
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "actions": dict(sorted(self.actions.items())),
            "bytes_freed": self.bytes_freed,
            "seconds": round(self.seconds, 3),
        }


class Janitor:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        redis: Redis,
        settings: JanitorSettings,
        finalizer: CarveFinalizer,
        *,
        clock: Clock = utc_now,
        events: Relay | None = None,
        keyring: KeyRing | None = None,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._carves = carves_of(db)
        self._chunks = db[f"{settings.mongo_bucket}.chunks"]
        self._redis = redis
        self._settings = settings
        self._finalizer = finalizer
        self._clock = clock
        self._events = events
        self._owner = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self._orphan_scan = OrphanScan(db, settings, db[LOCKS])

    async def sweep(self, *, dry_run: bool = False) -> Report:
        """One pass over everything; a dry run changes nothing and reports what it would do."""
        report = Report(dry_run=dry_run)
        started = time.monotonic()
        if not dry_run and not await self._lock():
            report.skipped = True
            log.info("janitor sweep skipped: another janitor holds the lease")
            return report
        try:
            steps = (
                self._receiving,
                self._expire_failed,
                self._expire_complete,
                self._orphans,
                self._shred,
                self._sessions,
                self._left_behind_events,
            )
            for step in steps:
                with transient_on_redis_outage(step.__name__.strip("_")):
                    await step(report)
                if not dry_run and not await self._lock():  # renew between steps
                    log.warning("janitor lease lost to another janitor: sweep stopped")
                    break
        finally:
            if not dry_run:
                await self._unlock()
            report.seconds = time.monotonic() - started
        return report

    # --- the lease ---------------------------------------------------------------------------

    async def _lock(self) -> bool:
        now = datetime.now(UTC)  # wall clock: the lease must mean the same to every janitor
        until = now + timedelta(seconds=self._settings.janitor_lease)
        with transient_on_outage("janitor lease"):
            try:
                await self._db[LOCKS].update_one(
                    {"_id": LOCK_ID, "$or": [{"until": {"$lt": now}}, {"owner": self._owner}]},
                    {"$set": {"owner": self._owner, "until": until}},
                    upsert=True,
                )
            except DuplicateKeyError:
                return False  # the lease exists and is someone else's
        return True

    async def _unlock(self) -> None:
        with transient_on_outage("janitor lease"):
            await self._db[LOCKS].delete_one({"_id": LOCK_ID, "owner": self._owner})

    # --- 1. receiving carves -------------------------------------------------------------------

    async def _receiving(self, report: Report) -> None:
        now = self._clock()
        settings = self._settings
        quiet = min(settings.finalize_grace, settings.session_idle_timeout)
        query = {"status": Status.RECEIVING.value, "updated_at": {"$lt": now - _s(quiet)}}
        with transient_on_outage("janitor: receiving carves"):
            cursor = self._carves.find(query).sort("updated_at", 1)
            async for doc in cursor.batch_size(settings.janitor_batch):
                await self._check_receiving(doc, now, report)

    async def _check_receiving(self, doc: CarveDoc, now: datetime, report: Report) -> None:
        carve_id, count = doc["_id"], doc["block_count"]
        if report.dry_run:
            chunks = await self._chunks.count_documents({"files_id": carve_id})
            if chunks >= count:
                report.actions["finalized"] += 1
                return
        else:
            result = await self._finalizer.maybe_finalize(carve_id)
            if result.outcome in (Outcome.FINALIZED, Outcome.CORRUPT):
                report.actions[result.outcome.value] += 1
            if result.outcome is not Outcome.NOT_READY:
                return
            chunks = result.chunks
        last_block_at, accepted = await self._session_state(doc)
        last = max(doc["updated_at"], last_block_at) if last_block_at else doc["updated_at"]
        if now - last < _s(self._settings.session_idle_timeout):
            return  # a block came within the idle timeout (the ingest's clock or the assembler's)
        if accepted is not None and accepted >= count:
            # The ingest confirmed every block: they wait in the queue for an assembler.
            report.actions["waiting_for_assembly"] += 1
            return
        idle = self._settings.session_idle_timeout
        reason = f"idle: no block for {idle:g} s; {chunks} of {count} blocks stored"
        report.actions["failed"] += 1
        if report.dry_run:
            return
        fields = {
            "failure_reason": reason,
            "failed_at": now,
            "blocks_received": chunks,
            "chunks_counted": chunks,
        }
        changed = await transition(
            self._db,
            doc,
            Status.FAILED,
            fields,
            now,
            event=EventType.FAILED,
            events=self._events,
            unless_finalizing=True,
        )
        if changed:
            await end_session(self._redis, self._settings.redis_key_prefix, doc)
            log.info("carve %s failed: %s", carve_id, reason)

    async def _session_state(self, doc: CarveDoc) -> tuple[datetime | None, int | None]:
        """From the ingest's Redis session, in one round trip: when its last block came, and
        how many blocks the ingest confirmed (None for both when there is no session)."""
        meta, bits = session_keys(self._settings.redis_key_prefix, doc["session_id"])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(meta, "last_block_at")
            pipe.exists(meta)
            pipe.bitcount(bits)
            stamp, exists, accepted = await pipe.execute()
        last = datetime.fromtimestamp(int(stamp) / 1000, UTC) if stamp is not None else None
        return last, (int(accepted) if exists else None)

    # --- 2 and 3. retention ----------------------------------------------------------------------

    async def _expire_failed(self, report: Report) -> None:
        query = self._due(Status.FAILED, "failed_at", self._settings.failed_retention)
        await self._expire(query, Status.FAILED, "failed_purged", report)

    async def _expire_complete(self, report: Report) -> None:
        query = self._due(Status.COMPLETE, "completed_at", self._settings.retention)
        await self._expire(query, Status.COMPLETE, "expired", report)

    def _due(self, status: Status, since: str, retention: float) -> Document:
        """Carves in ``status`` whose time has come: an administrator's ``expires_at`` passed,
        or none set and ``retention`` passed since ``since``; never a held one (shared.holds)."""
        now = self._clock()
        return {
            "status": status.value,
            "$or": [
                {"expires_at": {"$lt": now}},
                {"expires_at": None, since: {"$lt": now - _s(retention)}},
            ],
            **FREE,
        }

    async def _expire(
        self, query: Document, from_status: Status, action: str, report: Report
    ) -> None:
        batch = self._settings.janitor_batch
        if report.dry_run:
            with transient_on_outage("janitor: retention"):
                report.actions[action] += await self._carves.count_documents(query)
            return
        while True:
            # Page by page: each page leaves the query once its carves have moved on.
            with transient_on_outage("janitor: retention"):
                page = await self._carves.find(query).limit(batch).to_list()
            if not page:
                return
            for doc in page:
                await self._expire_one(doc, query, from_status, action, report)

    async def _expire_one(
        self, doc: CarveDoc, due: Document, from_status: Status, action: str, report: Report
    ) -> None:
        now = self._clock()
        fields = {"expired_at": now, "expired_from": from_status.value}
        # Tombstone first: from here on nobody downloads it; then the bytes go.
        expired = await transition(
            self._db,
            doc,
            Status.EXPIRED,
            fields,
            now,
            event=EventType.EXPIRED,
            events=self._events,
            unless_held=True,
            where=due,  # still due: not held, nor given a later expiry, since the page was read
        )
        if expired:
            report.actions[action] += 1
        elif not await self._ended(doc["_id"]):
            # Held or given a later expiry since the page was read: its bytes stay.
            report.actions["kept_held"] += 1
            return
        await end_session(self._redis, self._settings.redis_key_prefix, doc)
        _, freed = await purge_archive(
            self._db,
            self._settings.mongo_bucket,
            doc["_id"],
            batch=self._settings.janitor_batch,
            carve=doc,
        )
        report.bytes_freed += freed

    async def _ended(self, carve_id: str) -> bool:
        """True when the carve's bytes are to go anyway (another janitor or a delete won)."""
        with transient_on_outage("janitor: retention"):
            doc = await self._carves.find_one({"_id": carve_id}, {"status": 1})
        return doc is None or doc["status"] in ENDED

    # --- 4. orphan chunks -----------------------------------------------------------------------

    async def _orphans(self, report: Report) -> None:
        """A slice of the orphan chunks (``services.janitor.orphans``)."""
        await self._orphan_scan.step(report.actions, dry_run=report.dry_run)

    async def _shred(self, report: Report) -> None:
        """Crypto-shredding (``shared.crypto.shred``): keys of deleted and expired carves."""
        if self._keyring is None:
            return
        batch, bucket = self._settings.janitor_batch, self._settings.mongo_bucket
        n = await shred_ended(self._db, bucket, self._keyring, batch=batch, dry_run=report.dry_run)
        if n:
            report.actions["keys_shredded"] += n

    # --- 5. Redis sessions ----------------------------------------------------------------------

    async def _sessions(self, report: Report) -> None:
        prefix = self._settings.redis_key_prefix
        batch = self._settings.janitor_batch
        async for keys in scan_keys(self._redis, session_hash_pattern(prefix), batch):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "carve_id")
                owners: list[bytes | None] = await pipe.execute()
            ids = [o.decode() for o in owners if o is not None]
            with transient_on_outage("janitor: sessions"):
                found = self._carves.find({"_id": {"$in": ids}}, {"status": 1, "host": 1})
                docs = [d async for d in found]
            receiving = {d["_id"] for d in docs if d["status"] == Status.RECEIVING}
            ended = [
                key
                for key, owner in zip(keys, owners, strict=True)
                if owner is None or owner.decode() not in receiving
            ]
            report.actions["sessions_removed"] += len(ended)
            if ended and not report.dry_run:
                bitmaps = [session_keys(prefix, session_of(prefix, k.decode()))[1] for k in ended]
                await self._redis.delete(*ended, *bitmaps)
                quotas = Quotas(self._redis, prefix)
                for doc in docs:
                    if doc["_id"] not in receiving:
                        await quotas.release(doc.get("host") or "", [doc["_id"]])

    # --- 6. events a dead process left in the outbox ---------------------------------------------

    async def _left_behind_events(self, report: Report) -> None:
        if self._events is None or report.dry_run:
            return
        try:
            with transient_on_outage("janitor: events"):
                published = await self._events.sweep()
        except AMQP_ERRORS as exc:  # they stay in the outbox: the next sweep or relay
            log.warning("janitor: left-behind events not published: %s", exc.__class__.__name__)
            return
        report.actions["events_published"] += published


@contextlib.contextmanager
def transient_on_redis_outage(what: str) -> Iterator[None]:
    """Redis unreachable (or still loading its data) is a backend outage like MongoDB's: the
    sweep stops there and the next one resumes (``--once`` exits 1, the loop goes on)."""
    try:
        yield
    except REDIS_OUTAGE as exc:
        raise Unavailable("Redis", f"unavailable during {what}: {exc.__class__.__name__}") from exc


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
