"""Caps: downloads streaming at once (a chunk of memory and a socket each), and tar jobs.
Each has a share per responder, so that no responder can take every slot or worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from prometheus_client import Gauge

from shared.errors import LimitExceeded, Unavailable


class StreamBusy(LimitExceeded):
    """This responder already streams its share of the downloads."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "stream_busy", limit="responder")


class StreamSlots:
    """Archive and member downloads streaming at once: ``limit`` in all (more: Unavailable,
    503), and ``per_responder`` of them for one responder (more: StreamBusy, 429). One
    responder's downloads, however many or slow, leave the other slots to the others (and
    pace.py cuts off a client that reads too slowly)."""

    def __init__(self, limit: int, per_responder: int, streaming: Gauge | None = None) -> None:
        self.limit = limit
        self.per_responder = per_responder
        self.used = 0
        self._by_responder: dict[str, int] = {}
        self._streaming = streaming

    @contextlib.contextmanager
    def hold(self, responder: str) -> Iterator[None]:
        """A slot for one stream of ``responder``, or StreamBusy / Unavailable."""
        mine = self._by_responder.get(responder, 0)
        if mine >= self.per_responder:
            raise StreamBusy(f"you already stream {mine} downloads: wait for one to finish")
        if self.used >= self.limit:
            raise Unavailable("download", f"{self.limit} downloads already streaming")
        self.used += 1
        self._by_responder[responder] = mine + 1
        if self._streaming is not None:
            self._streaming.inc()
        try:
            yield
        finally:
            self.used -= 1
            left = self._by_responder[responder] - 1
            if left:
                self._by_responder[responder] = left
            else:
                del self._by_responder[responder]
            if self._streaming is not None:
                self._streaming.dec()


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
