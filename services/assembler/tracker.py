"""The carves this assembler wrote to lately: their progress, and a second look once idle.

Counting every chunk in the carve document would double the MongoDB writes
per block (on SecantusDB an update costs more than inserting a whole batch of
chunks). Instead the tracker adds up new chunks per carve and writes the
progress once per interval, and asks the finalizer about every carve whose
chunks stopped arriving for ``idle`` seconds: that completes carves whose
blocks came out of order, or whose last block was handled by a process that
died. Progress may lag, or undercount after a crash; the finalizer counts the
chunks exactly and sets the final figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from shared.errors import Unavailable
from shared.finalize import CarveFinalizer, Outcome
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ProgressStore(Protocol):
    """Where progress goes (GridChunkStore in production)."""

    async def add_received(self, counts: dict[str, int]) -> None: ...


@dataclass
class _Entry:
    pending: int = 0  # chunks written since the last progress write
    last_write: float = 0.0
    dirty: bool = False  # a chunk came since the finalizer last looked


class CarveTracker:
    """Per carve this process wrote to: buffered progress, and a finalizer look once idle.

    ``note`` is called for every stored block; a background task (``start``/``stop``)
    writes progress every ``interval`` and, for carves quiet for ``idle`` seconds, asks the
    finalizer. Carves untouched for ``forget_after`` seconds are dropped. Nothing here is
    needed for correctness: the durable completion trigger and the janitor finish carves a
    dead process knew about; the tracker only makes completion and progress prompt.
    """

    def __init__(
        self,
        progress: ProgressStore,
        finalizer: CarveFinalizer,
        *,
        interval: float = 1.0,
        idle: float = 2.0,
        forget_after: float = 3600.0,
    ) -> None:
        self._progress = progress
        self._finalizer = finalizer
        self._interval = interval
        self._idle = idle
        self._forget_after = forget_after
        self._carves: dict[str, _Entry] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, carve_id: str, *, new_chunk: bool) -> None:
        entry = self._carves.setdefault(carve_id, _Entry())
        entry.pending += int(new_chunk)
        entry.last_write = time.monotonic()
        entry.dirty = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="carve-tracker")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        with contextlib.suppress(Unavailable):
            await self._flush()  # last progress, best effort

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except Unavailable as exc:
                log.warning("tracker sweep postponed: %s", exc)
            except Exception:
                # A bug must not end the re-checks for the life of the process: log it, go on
                # (the durable trigger and the janitor still finish every carve).
                log.exception("tracker sweep failed; the next one goes on")

    async def sweep(self) -> None:
        """Write pending progress; re-check idle carves; forget old ones.

        A carve whose re-check fails (MongoDB away) stays due: it is checked again
        next round, and the other carves of this round are still checked now.
        """
        postponed: Unavailable | None = None
        try:
            await self._flush()
        except Unavailable as exc:
            postponed = exc
        now = time.monotonic()
        for carve_id, entry in list(self._carves.items()):
            idle_for = now - entry.last_write
            if entry.dirty and idle_for >= self._idle:
                try:
                    result = await self._finalizer.maybe_finalize(carve_id)
                except Unavailable as exc:
                    postponed = exc
                    continue
                # Cleared only now: a note() that came during the call keeps it due.
                if entry.last_write <= now:
                    entry.dirty = False
                if result.outcome in (Outcome.FINALIZED, Outcome.NOT_RECEIVING, Outcome.CORRUPT):
                    self._carves.pop(carve_id, None)
            elif idle_for >= self._forget_after:
                self._carves.pop(carve_id, None)
        if postponed is not None:
            raise postponed

    async def _flush(self) -> None:
        counts = {c: e.pending for c, e in self._carves.items() if e.pending}
        if not counts:
            return
        for entry in self._carves.values():
            entry.pending = 0
        try:
            await self._progress.add_received(counts)
        except Unavailable:
            for carve_id, k in counts.items():  # keep them for the next try
                self._carves.setdefault(carve_id, _Entry()).pending += k
            raise

    def tracked(self) -> int:
        return len(self._carves)
