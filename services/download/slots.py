"""Caps: downloads streaming at once (a chunk of memory and a socket each), and tar jobs."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterator

from prometheus_client import Gauge

from shared.errors import ClientError, Unavailable


class StreamSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for one stream, or Unavailable (503, Retry-After) when all are taken."""
        if self.used >= self.limit:
            raise Unavailable("download", f"{self.limit} downloads already streaming")
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1


class TarBusy(ClientError):
    """This carve, or this responder, already holds its share of the tar workers."""

    status = 429
    code = "tar_busy"


class TarJobs:
    """Admission to the tar workers: ``total`` at once, and a share per carve and per responder.

    A job counts against its carve and its responder from the moment it asks (waiting
    included), so neither one hostile carve nor one responder can hold every worker: other
    responders' listings still get one. Over a share: TarBusy (429) at once, never a queue.
    """

    def __init__(self, total: int, per_carve: int, per_responder: int, running: Gauge) -> None:
        self._free = asyncio.Semaphore(total)
        self._per = {"carve": per_carve, "responder": per_responder}
        self._held: dict[str, collections.Counter[str]] = {
            "carve": collections.Counter(),
            "responder": collections.Counter(),
        }
        self._running = running

    @contextlib.asynccontextmanager
    async def hold(self, carve_id: str, responder: str) -> AsyncIterator[None]:
        keys = {"carve": carve_id, "responder": responder}
        for kind, key in keys.items():
            if self._held[kind][key] >= self._per[kind]:
                raise TarBusy(
                    f"this {kind} already has {self._per[kind]} tar jobs: retry when one ends",
                    limit=kind,
                )
        for kind, key in keys.items():
            self._held[kind][key] += 1
        try:
            async with self._free:
                self._running.inc()
                try:
                    yield
                finally:
                    self._running.dec()
        finally:
            for kind, key in keys.items():
                self._held[kind][key] -= 1
                if not self._held[kind][key]:
                    del self._held[kind][key]
