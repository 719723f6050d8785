"""The sweep: scans asked for in MongoDB rather than by an event (an admin's re-scan), and
scans a dead replica left running (their lease lapsed). Every ``CARVE_TRIAGE_SWEEP_INTERVAL``
it takes as many as there are free workers, oldest request first."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from services.triage.scan import Triage
from services.triage.store import TriageStore
from shared.errors import Unavailable
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Sweep:
    def __init__(self, triage: Triage, store: TriageStore, workers: int) -> None:
        self._triage = triage
        self._store = store
        self._workers = workers
        self._running: set[asyncio.Task[None]] = set()

    async def once(self) -> int:
        """Start the scans waiting, as many as there are free workers; how many started."""
        now = datetime.now(UTC)
        for carve_id in await self._store.give_up(now):
            log.error("carve %s: triage interrupted too often, marked failed", carve_id)
        free = self._workers - len(self._running)
        if free <= 0:
            return 0
        started = 0
        for carve_id in await self._store.waiting(now, free):
            task = asyncio.create_task(self._scan(carve_id))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started += 1
        return started

    async def _scan(self, carve_id: str) -> None:
        try:
            await self._triage.run(carve_id)
        except Unavailable as exc:
            log.warning("triage of %s waits: %s", carve_id, exc)
        except Exception:
            log.exception("triage of %s failed", carve_id)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.once()
            except Unavailable as exc:
                log.warning("triage sweep skipped: %s", exc)

    async def stop(self) -> None:
        await cancel_and_wait(*self._running)
