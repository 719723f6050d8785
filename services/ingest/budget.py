"""A budget of request bytes in flight, so memory is bounded by configuration, not by load.

A block request holds its body, the decoded block and the broker's frames
until RabbitMQ confirms: a few times its size. With hundreds of hosts sending
8 MiB blocks at once that would be gigabytes, so each request first reserves
its body's size here and waits its turn. Waiting costs nothing (the body
stays in the socket) and is bounded by the request deadline, after which
osquery is told to retry.
"""

from __future__ import annotations

import asyncio


class ByteBudget:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0
        self._waiting = 0
        self._changed = asyncio.Condition()

    @property
    def used(self) -> int:
        return self._used

    def hold(self, size: int) -> _Hold:
        """``async with budget.hold(size):`` reserves ``size`` bytes (at most the whole
        budget: a larger request still runs, alone) until the block is done."""
        return _Hold(self, min(size, self._capacity))

    async def _reserve(self, size: int) -> None:
        if self._used + size <= self._capacity:
            self._used += size  # the common case: no lock, no wait
            return
        self._waiting += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._used + size <= self._capacity)
                self._used += size
        finally:
            self._waiting -= 1

    async def _give_back(self, size: int) -> None:
        self._used -= size
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()


class _Hold:
    """One reservation; a class rather than an @asynccontextmanager generator, whose
    machinery costs more Python calls than the reservation itself (once per block)."""

    __slots__ = ("_budget", "_size")

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    async def __aenter__(self) -> None:
        await self._budget._reserve(self._size)

    async def __aexit__(self, *exc: object) -> None:
        await self._budget._give_back(self._size)
