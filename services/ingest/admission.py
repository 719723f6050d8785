"""Admitting a new carve: the host's and the fleet's shares, with stale shares given back.

``shared.quotas`` keeps the reservations in Redis. A reservation outlives its
carve until someone gives it back; the janitor does when it ends a carve, but a
carve completed by an assembler has nobody to do it. So when a host is at a
limit, the ingest asks MongoDB which of that host's carves still receive and
releases the rest before it answers: a carve that ended frees its share for
the very next start. The fleet-wide check does the same for the oldest
reservations, at most once every few seconds per process.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from pymongo.asynchronous.collection import AsyncCollection

from shared.carves import CarveDoc, Status
from shared.errors import Conflict, LimitExceeded
from shared.quotas import Quotas, Refusal

log = logging.getLogger(__name__)

_HOST = frozenset({Refusal.HOST_ACTIVE, Refusal.HOST_BYTES})
_GLOBAL = frozenset({Refusal.GLOBAL_ACTIVE, Refusal.GLOBAL_BYTES, Refusal.GLOBAL_SESSIONS})
# A share admitted this recently may belong to a start still writing its carve document.
_PENDING_SECONDS = 60.0
_MESSAGES = {
    Refusal.HOST_ACTIVE: "this host already has as many carves receiving as it may",
    Refusal.HOST_RATE: "this host started too many carves in the last minute",
    Refusal.HOST_BYTES: "this host's receiving carves declare as many bytes as it may hold",
    Refusal.GLOBAL_ACTIVE: "the server has as many carves receiving as it takes",
    Refusal.GLOBAL_BYTES: "the server's receiving carves declare as many bytes as it takes",
    Refusal.GLOBAL_SESSIONS: "the server holds as much upload session state as it may",
    Refusal.TAKEN: "carve_id is already used by another host",
}


class Admission:
    """Refuses a start (LimitExceeded: JSON 429) past its host's or the fleet's share."""

    def __init__(
        self,
        quotas: Quotas,
        carves: AsyncCollection[CarveDoc],
        *,
        global_scan: int = 1000,
        global_every: float = 5.0,
    ) -> None:
        self._quotas = quotas
        self._carves = carves
        self._global_scan = global_scan
        self._global_every = global_every
        self._last_global = float("-inf")

    async def admit(self, host: str, carve_id: str, carve_size: int, block_count: int) -> None:
        refusal = await self._quotas.admit(host, carve_id, carve_size, block_count)
        if refusal in _HOST and await self._reconcile_host(host):
            refusal = await self._quotas.admit(host, carve_id, carve_size, block_count, again=True)
        if refusal in _GLOBAL and await self._reconcile_global():
            refusal = await self._quotas.admit(host, carve_id, carve_size, block_count, again=True)
        if refusal is Refusal.TAKEN:
            raise Conflict(_MESSAGES[refusal])
        if refusal is not None:
            raise LimitExceeded(_MESSAGES[refusal], refusal.value)

    async def release(self, host: str, carve_id: str) -> None:
        """Give back a share reserved for a start that did not go through."""
        await self._quotas.release(host, [carve_id])

    async def _reconcile_host(self, host: str) -> int:
        held = await self._quotas.held_by(host)
        ids = [carve_id for carve_id, _ in held]
        docs = self._carves.find({"_id": {"$in": ids}}, {"status": 1, "host": 1})
        found = {d["_id"]: d async for d in docs}
        recent = time.time() - _PENDING_SECONDS
        stale = [
            carve_id
            for carve_id, admitted in held
            if _ended(found.get(carve_id), host, pending=admitted > recent)
        ]
        return await self._quotas.release(host, stale)

    async def _reconcile_global(self) -> int:
        now = time.monotonic()
        if now - self._last_global < self._global_every:
            return 0
        self._last_global = now
        oldest = await self._quotas.oldest(self._global_scan)
        docs = self._carves.find({"_id": {"$in": oldest}}, {"status": 1, "host": 1})
        found = {d["_id"]: d async for d in docs}
        by_host: dict[str, list[str]] = defaultdict(list)
        for carve_id in oldest:
            doc = found.get(carve_id)
            if doc is not None and doc["status"] != Status.RECEIVING:
                by_host[doc.get("host") or ""].append(carve_id)
        freed = 0
        for host, ids in by_host.items():
            freed += await self._quotas.release(host, ids)
        if freed:
            log.info("gave back %d shares of carves no longer receiving", freed)
        return freed


def _ended(doc: CarveDoc | None, host: str, *, pending: bool) -> bool:
    """Whether a share of ``host`` is held for nothing: its carve stopped receiving, belongs
    to another host (a start refused as a conflict), or never got written."""
    if doc is None:
        return not pending
    return doc["status"] != Status.RECEIVING or doc.get("host") != host
