"""Triage of one carve: claim it, stream its archive to a worker, write the result.

``Triage.run`` is what the queue consumer and the sweep call. At most ``CARVE_TRIAGE_WORKERS``
run at once (``slots``); a caller waits for a slot before it claims, so a claimed carve is
always being scanned and its lease is always renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.triage.library import Library, Loaded
from services.triage.metrics import TriageMetrics
from services.triage.pool import ScanPool
from services.triage.result import build_result, failed_result
from services.triage.settings import TriageSettings
from services.triage.store import TriageStore
from services.triage.worker import Findings, ScanJob
from shared.carve_chunks import plaintext_chunks
from shared.carves import CarveDoc, Compression
from shared.crypto.keys import KeyRing
from shared.errors import CorruptArchive
from shared.events.outbox import Notifier, announce
from shared.failpoints import failpoint
from shared.manifest import COLLECTION as MANIFESTS
from shared.mongo import Document, transient_on_outage
from shared.settings import MiB

log = logging.getLogger(__name__)
_BATCH_BYTES = 8 * MiB  # chunks fetched per query


def _since(when: datetime | None) -> float:
    return (datetime.now(UTC) - when).total_seconds() if when else -1.0


class LostClaim(Exception):
    """The carve's claim was taken away mid-scan (a re-scan was asked for)."""


class Triage:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        settings: TriageSettings,
        library: Library,
        pool: ScanPool,
        store: TriageStore,
        metrics: TriageMetrics,
        relay: Notifier | None,
        keys: KeyRing | None = None,
    ) -> None:
        self._db = db
        self._keys = keys
        self._settings = settings
        self._library = library
        self._pool = pool
        self._store = store
        self._metrics = metrics
        self._relay = relay
        self.slots = asyncio.Semaphore(settings.triage_workers)

    def job(self, doc: CarveDoc, hash_from: int) -> ScanJob:
        s = self._settings
        return ScanJob(
            zstd=doc.get("compression") == Compression.ZSTD.value,
            max_member_bytes=s.triage_max_member_bytes,
            max_carve_bytes=s.triage_max_carve_bytes,
            max_seconds=s.triage_max_seconds,
            scan_timeout=s.triage_scan_timeout,
            hash_from=hash_from,
        )

    async def run(self, carve_id: str) -> str | None:
        """Scan ``carve_id`` if it is to be scanned now; its verdict, or None if another
        replica has it, it is done already, or the claim was lost."""
        await self._library.loaded_once.wait()
        async with self.slots:
            loaded = self._library.current
            assert loaded is not None
            started = datetime.now(UTC)
            claimed = await self._store.claim(carve_id, loaded.rules.version, started)
            if claimed is None:
                return None
            doc, token = claimed
            clock = time.monotonic()
            try:
                result = await self._scan(doc, token, loaded)
            except LostClaim:
                log.info("carve %s: scan given up, a re-scan was asked for", carve_id)
                return None
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._store.release(carve_id, token)
                raise
            failpoint("triage.before_result")  # tests: a replica dies with its scan done
            written = await self._store.write(doc, token, result, datetime.now(UTC))
            if written is None:
                log.info("carve %s: result dropped, the claim was lost meanwhile", carve_id)
                return None
            announce(self._relay, carve_id)
            self._count(result, time.monotonic() - clock)
            log.info(
                "carve %s triaged: %s (%d hits, %d skipped, %d bytes scanned) in %.3f s, "
                "%.3f s after it completed",
                carve_id,
                result["verdict"],
                result["hit_count"],
                result["skipped_count"],
                result["scanned_bytes"],
                time.monotonic() - clock,
                _since(doc.get("completed_at")),
            )
            return str(result["verdict"])

    async def _scan(self, doc: CarveDoc, token: str, loaded: Loaded) -> dict[str, Any]:
        started = datetime.now(UTC)
        with transient_on_outage("manifest read"):
            manifest = await self._db[MANIFESTS].find_one({"_id": doc["_id"]}, {"members": 1})
        hash_from = len((manifest or {}).get("members", []))
        job = self.job(doc, hash_from)
        scan = asyncio.ensure_future(self._pool.scan(self._bytes(doc), job, loaded.rules))
        keeper = asyncio.ensure_future(self._keep_claim(doc["_id"], token, scan))
        try:
            found: Findings = await scan
        except CorruptArchive as exc:
            return failed_result(loaded, str(exc), started, datetime.now(UTC))
        except asyncio.CancelledError:
            if keeper.done() and not keeper.cancelled() and keeper.result() is False:
                raise LostClaim from None
            raise
        finally:
            keeper.cancel()
            scan.cancel()
        return build_result(found, manifest, loaded, started, datetime.now(UTC))

    async def _bytes(self, doc: CarveDoc) -> AsyncIterator[bytes]:
        async for _, data in plaintext_chunks(
            self._db, self._settings.mongo_bucket, doc, batch_bytes=_BATCH_BYTES, keys=self._keys
        ):
            yield data

    async def _keep_claim(self, carve_id: str, token: str, scan: asyncio.Future[Findings]) -> bool:
        """Renew the claim every third of the lease; cancel ``scan`` when it is lost."""
        every = self._settings.triage_lease / 3
        while True:
            await asyncio.sleep(every)
            try:
                kept = await self._store.renew(carve_id, token, datetime.now(UTC))
            except Exception as exc:  # MongoDB away: the lease may lapse; the write will tell
                log.warning("carve %s: lease not renewed (%s)", carve_id, exc)
                continue
            if not kept:
                scan.cancel()
                return False

    def _count(self, result: dict[str, Any], seconds: float) -> None:
        m = self._metrics
        m.scans.labels(str(result["verdict"])).inc()
        m.scanned_bytes.inc(int(result["scanned_bytes"]))
        m.seconds.observe(seconds)
        for hit in result["hits"]:
            m.hits.labels(hit["kind"], hit.get("rule") or hit.get("set") or "").inc()
        for skip in result["skipped"]:
            m.skipped.labels(skip["reason"]).inc()
