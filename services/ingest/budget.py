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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._used = 0
        self._waiting = 0
        self._changed = asyncio.Condition()

    @property
    def used(self) -> int:
        return self._used

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        # A request larger than the whole budget still runs, alone.
        size = min(size, self._capacity)
        if self._used + size <= self._capacity:
            self._used += size  # the common case: no lock, no wait
        else:
            self._waiting += 1
            try:
                async with self._changed:
                    await self._changed.wait_for(lambda: self._used + size <= self._capacity)
                    self._used += size
            finally:
                self._waiting -= 1
        try:
            yield
        finally:
            self._used -= size
            if self._waiting:
                async with self._changed:
                    self._changed.notify_all()
