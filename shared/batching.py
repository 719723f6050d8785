"""Coalescing concurrent calls into one backend round trip.

Callers ``submit`` one item each and await their own result. While a flush
is in flight, new items wait; the next flush takes all of them at once. Under
light load a block is written alone, with no added delay; under heavy load
the batches grow by themselves, up to ``max_items`` items and ``max_weight``
(for chunks: bytes, so a batch of big blocks stays small in memory).

``concurrency`` flushes may be in flight at once (default one). For a backend
whose answer takes a fixed wait (RabbitMQ's confirm waits for an fsync), a
second flush in flight overlaps that wait instead of queueing behind it.

``linger`` (seconds, default none) lets a flush wait that long for company
before it goes, unless its batch fills first (``max_items`` or ``max_weight``):
concurrent callers then share one write instead of a few. While one runner
lingers, new items join its batch rather than start another runner.

With ``linger_alone=False`` a flush lingers only while another flush is in flight:
callers that wait for that one (each sends its next item once answered) are the
company worth waiting for. A lone caller, with nothing else in flight, is never
delayed. ``linger_below`` (a weight) lingers only while the batch weighs less:
big items fill a round trip's worth on their own. ``on_linger`` is called for
each flush that does wait.

With ``inline=True`` an item that finds nothing pending and nothing in flight is
flushed in its caller's own task: no runner task, no future, two event-loop
turns fewer (a lone osquery host sends one block at a time, so each of its
blocks is such an item). Items that arrive meanwhile queue as usual and go to a
runner once it ends; it counts as one of the ``concurrency`` flushes. A caller
cancelled during its inline flush cancels that flush (its own item only). An item
that would linger alone (``linger`` with ``linger_alone``) is never flushed inline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A flush returns one entry per item: its result, or the exception that item must raise.
Flush = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settle(
    batch: Sequence[tuple[T, asyncio.Future[R]]], results: Sequence[R | BaseException]
) -> None:
    for (_, future), result in zip(batch, results, strict=True):
        if future.done():  # its caller was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        max_items: int = 64,
        *,
        weight: Callable[[T], int] | None = None,
        max_weight: int = 0,
        concurrency: int = 1,
        linger: float = 0.0,
        linger_alone: bool = True,
        linger_below: int = 0,
        on_linger: Callable[[], None] = lambda: None,
        inline: bool = False,
    ) -> None:
        self._flush = flush
        # A lone item that would linger for company (linger_alone) is not flushed inline.
        self._inline = inline and not (linger and linger_alone)
        self._inline_flushing = 0  # inline flushes in flight (in their callers' tasks)
        self._linger = linger
        self._linger_alone = linger_alone
        self._linger_below = linger_below
        self._flushing = 0  # flushes in flight
        self._on_linger = on_linger
        # Set while a runner lingers: resolved early once its batch is full.
        self._waiter: asyncio.Future[None] | None = None
        self._pending_weight = 0
        self._concurrency = concurrency
        self._max_items = max_items
        self._weight = weight
        self._max_weight = max_weight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._runners: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        if self._inline and not self._pending and not self._flushing and self._waiter is None:
            return await self._flush_inline(item)  # (never set with linger_alone: see init)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._weight is not None:
            self._pending_weight += self._weight(item)
        if (waiter := self._waiter) is not None:
            if self._enough() and not waiter.done():
                waiter.set_result(None)  # the lingering runner's batch is complete
            return await future
        self._spawn()
        return await future

    async def _flush_inline(self, item: T) -> R:
        """``item`` alone, flushed in the caller's task (see ``inline``)."""
        self._flushing += 1
        self._inline_flushing += 1
        try:
            (result,) = await self._flush([item])
        finally:
            self._flushing -= 1
            self._inline_flushing -= 1
            if self._pending and self._waiter is None:
                self._spawn()  # what arrived meanwhile, unless a runner lingers for it
        if isinstance(result, BaseException):
            raise result
        return result

    def _spawn(self) -> None:
        # A finished runner may still wait for its done-callbacks: prune by done(), not by them.
        self._runners = {runner for runner in self._runners if not runner.done()}
        if len(self._runners) + self._inline_flushing < self._concurrency:
            self._runners.add(asyncio.create_task(self._drain()))

    def _enough(self) -> bool:
        """No reason to linger: the batch is full, or heavy enough to go alone."""
        heavy = self._linger_below and self._pending_weight >= self._linger_below
        return self._full() or bool(heavy)

    def _full(self) -> bool:
        if len(self._pending) >= self._max_items:
            return True
        return self._weight is not None and self._pending_weight >= self._max_weight

    async def _gather(self) -> None:
        """Wait up to ``linger`` for the batch to fill (another runner may be doing it)."""
        if self._waiter is not None or self._enough():
            return
        if not self._linger_alone and not self._flushing:
            return  # nobody else is in flight: no company is coming
        self._on_linger()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._linger, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _batch_size(self) -> int:
        if self._weight is None:
            return self._max_items
        total = 0
        for size, (item, _) in enumerate(self._pending[: self._max_items]):
            total += self._weight(item)
            if size and total > self._max_weight:
                return size
        return self._max_items

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        size = self._batch_size()
        batch = self._pending[:size]
        del self._pending[:size]
        if self._weight is not None:
            self._pending_weight -= sum(self._weight(item) for item, _ in batch)
        if self._linger and self._pending:
            self._spawn()  # what the full batch left: to a free runner, not after this flush
        return batch

    async def _drain(self) -> None:
        while self._pending:
            if self._linger:
                if self._waiter is not None:
                    return  # another runner is gathering these items
                await self._gather()
            batch = self._take()
            self._flushing += 1
            try:
                results = await self._flush([item for item, _ in batch])
            except BaseException as exc:  # every caller of the batch sees the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                    raise
                # A flush may also raise CancelledError without this task being cancelled
                # (aiormq cancels pending confirms when its channel closes): go on with the
                # items queued meanwhile, or they would wait for some later submit.
                continue
            finally:
                self._flushing -= 1
            _settle(batch, results)
