"""Caps: downloads streaming at once (a chunk of memory and a socket each), and tar jobs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from prometheus_client import Gauge

from shared.errors import LimitExceeded, Unavailable


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


class TarBusy(LimitExceeded):
    """Too many tar jobs already wait for this carve's, or this responder's, share."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message, "tar_busy", **details)


class _Share:
    """One carve's (or responder's) share of the workers, and who holds or waits for it."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.users = 0  # holding or waiting


class TarJobs:
    """Admission to the tar workers: ``total`` at once, and a share per carve and per responder.

    A job first takes a slot of its carve's share, then of its responder's, then a worker
    (always in that order, so nobody waits in a cycle). Neither one hostile carve nor one
    responder can hold every worker: other responders' jobs still get one. A job waiting
    for its share holds no worker; past ``max_waiting`` users of one share: TarBusy (429).
    """

    def __init__(
        self,
        total: int,
        per_carve: int,
        per_responder: int,
        running: Gauge,
        *,
        max_waiting: int = 32,
    ) -> None:
        self._free = asyncio.Semaphore(total)
        self._sizes = {"carve": per_carve, "responder": per_responder}
        self._shares: dict[str, dict[str, _Share]] = {"carve": {}, "responder": {}}
        self._max_users = {kind: size + max_waiting for kind, size in self._sizes.items()}
        self._running = running

    @contextlib.asynccontextmanager
    async def hold(self, carve_id: str, responder: str) -> AsyncIterator[None]:
        keys = {"carve": carve_id, "responder": responder}
        for kind, key in keys.items():
            share = self._shares[kind].get(key)
            if share is not None and share.users >= self._max_users[kind]:
                raise TarBusy(
                    f"too many tar jobs already wait for this {kind}: retry shortly", limit=kind
                )
        shares = [self._join(kind, key) for kind, key in keys.items()]
        try:
            async with shares[0].slots, shares[1].slots, self._free:
                self._running.inc()
                try:
                    yield
                finally:
                    self._running.dec()
        finally:
            for (kind, key), share in zip(keys.items(), shares, strict=True):
                share.users -= 1
                if not share.users:
                    del self._shares[kind][key]

    def _join(self, kind: str, key: str) -> _Share:
        share = self._shares[kind].setdefault(key, _Share(self._sizes[kind]))
        share.users += 1
        return share
