"""Carves by status, for ``/metrics``: counted at each scrape (a scrape hook, shared.metrics).

The counts use the (status, ...) indexes, as the console's summary does; the idle time of the
least recently updated receiving carve is one index seek on (status, updated_at). A carve
receiving with nothing moving for longer than CARVE_SESSION_IDLE_TIMEOUT plus a janitor
interval is stuck: the janitor should have finalized or failed it (docs/runbooks.md).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web

from services.download import keys
from shared import keys as shared_keys
from shared.carves import Status, carves_of

COUNTED = (Status.RECEIVING, Status.COMPLETE, Status.FAILED)


async def count_carves(app: web.Application) -> None:
    """Set ``carve_carves{status}`` and ``carve_receiving_idle_seconds`` from MongoDB."""
    metrics = app[keys.METRICS]
    carves = carves_of(app[shared_keys.MONGO_DB])
    receiving = {"status": Status.RECEIVING.value}
    counts, oldest = await asyncio.gather(
        asyncio.gather(*(carves.count_documents({"status": s.value}) for s in COUNTED)),
        carves.find_one(receiving, {"updated_at": 1}, sort=[("updated_at", 1)]),
    )
    for status, count in zip(COUNTED, counts, strict=True):
        metrics.carves.labels(status.value).set(count)
    idle = 0.0
    if oldest is not None and isinstance(oldest.get("updated_at"), datetime):
        idle = max(0.0, (datetime.now(UTC) - oldest["updated_at"]).total_seconds())
    metrics.receiving_idle.set(idle)
