"""Carves by status, for ``/metrics``: counted at most once per CARVE_CENSUS_TTL per process.

The counts use the (status, ...) indexes, as the console's summary does; the idle time of the
least recently updated receiving carve is one index seek on (status, updated_at). A carve
receiving with nothing moving for longer than CARVE_SESSION_IDLE_TIMEOUT plus a janitor
interval is stuck: the janitor should have finalized or failed it (docs/runbooks.md).

Counting is still work in proportion to the carves (index keys), and ``/metrics`` answers
whoever reaches the metrics port, so a scrape does not always count: a census is reused for
``census_ttl`` seconds after it ended (well or not), at most one runs at a time per process
(scrapes that come while it runs wait for it, up to the scrape hooks' timeout, and share its
result) and a census that fails (MongoDB away) leaves the gauges as they were.
``carve_census_age_seconds`` says how old they are. A census runs as its own task, so a
scrape that stops waiting (shared.metrics.HOOK_TIMEOUT) does not cancel it: the next scrape
gets its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from services.download.metrics import DownloadMetrics
from shared import keys as shared_keys
from shared.carves import Status, carves_of
from shared.metrics import add_scrape_hook
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

COUNTED = (Status.RECEIVING, Status.COMPLETE, Status.FAILED)
# A census taking longer than this is given up (it failed): the next one may start.
CENSUS_TIMEOUT = 60.0


async def count_carves(db: AsyncDatabase[Any]) -> tuple[dict[Status, int], float]:
    """Carves by status, and the idle seconds of the stalest receiving carve (0: none)."""
    carves = carves_of(db)
    receiving = {"status": Status.RECEIVING.value}
    counts, oldest = await asyncio.gather(
        asyncio.gather(*(carves.count_documents({"status": s.value}) for s in COUNTED)),
        carves.find_one(receiving, {"updated_at": 1}, sort=[("updated_at", 1)]),
    )
    idle = 0.0
    if oldest is not None and isinstance(oldest.get("updated_at"), datetime):
        idle = max(0.0, (datetime.now(UTC) - oldest["updated_at"]).total_seconds())
    return dict(zip(COUNTED, counts, strict=True)), idle


class Census:
    """``carve_carves{status}`` and ``carve_receiving_idle_seconds`` from MongoDB, at most one
    census per ``ttl`` seconds and one at a time; ``refresh`` is the scrape hook."""

    def __init__(
        self,
        app: web.Application,
        metrics: DownloadMetrics,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self.ttl = ttl
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._next = float("-inf")  # no census before this (clock time)
        self._counted: float | None = None  # when a census last set the gauges
        self._first: float | None = None  # the first scrape (the age before any census)

    async def refresh(self) -> None:
        """Count now if the last census is older than the TTL and none runs; wait for the
        running one. Raises what the census raised (the gauges keep their values)."""
        if self._first is None:
            self._first = self.clock()
        try:
            if self._task is None and self.clock() >= self._next:
                self._task = asyncio.create_task(self._census(), name="carve-census")
            if self._task is not None:
                await asyncio.shield(self._task)
        finally:
            since = self._counted if self._counted is not None else self._first
            self._metrics.census_age.set(max(0.0, self.clock() - since))

    async def _census(self) -> None:
        try:
            async with asyncio.timeout(CENSUS_TIMEOUT):
                counts, idle = await count_carves(self._app[shared_keys.MONGO_DB])
            for status, count in counts.items():
                self._metrics.carves.labels(status.value).set(count)
            self._metrics.receiving_idle.set(idle)
            self._counted = self.clock()
        except Exception as exc:  # the gauges stay; the age grows; carve_check_up says why
            log.debug("carve census failed: %r", exc)
            raise
        finally:
            self._next = self.clock() + self.ttl
            self._task = None

    @property
    def running(self) -> asyncio.Task[None] | None:
        """The census running now, if one is."""
        return self._task

    async def close(self, _app: web.Application | None = None) -> None:
        """Stop a running census (on shutdown, before the MongoDB client closes)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)


CENSUS = web.AppKey("census", Census)


def add_census(app: web.Application, metrics: DownloadMetrics, ttl: float) -> Census:
    """The app's census: its scrape hook, and stopped when the app shuts down."""
    census = Census(app, metrics, ttl)
    app[CENSUS] = census
    add_scrape_hook(app, census.refresh)
    app.on_shutdown.append(census.close)
    return census
