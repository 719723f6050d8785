"""Coalescer(inline=True): a lone item is flushed in its caller's task, nothing else changes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.batching import Coalescer


async def test_a_lone_item_is_flushed_in_its_callers_task() -> None:
    tasks: list[asyncio.Task[object] | None] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        return [ValueError(i) if i < 0 else i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(flush, inline=True)
    for i in range(3):
        assert await coalescer.submit(i) == i * 10
    assert tasks == [asyncio.current_task()] * 3
    with pytest.raises(ValueError):
        await coalescer.submit(-1)  # an item's own error, raised as before
    assert await coalescer.submit(5) == 50


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_items_that_come_during_an_inline_flush_are_batched_within_concurrency(
    concurrency: int,
) -> None:
    in_flight = peak = 0
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal in_flight, peak
        batches.append(list(items))
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(
        flush, max_items=4, concurrency=concurrency, inline=True
    )
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)  # 0 is being flushed, inline
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(1, 13))) == list(range(1, 13))
    assert await first == 0
    assert batches[0] == [0]
    assert peak == min(concurrency, 4)  # the inline flush counts as one of them
    assert max(len(b) for b in batches) == 4
    assert sorted(i for b in batches for i in b) == list(range(13))
    assert await coalescer.submit(99) == 99  # and later ones are served again


async def test_a_caller_cancelled_during_its_inline_flush_does_not_strand_the_others() -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def flush(items: Sequence[str]) -> list[str | BaseException]:
        if items == ["slow"]:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(len(items))
                raise
        return list(items)

    coalescer: Coalescer[str, str] = Coalescer(flush, inline=True)
    slow = asyncio.create_task(coalescer.submit("slow"))
    await started.wait()
    queued = asyncio.create_task(coalescer.submit("queued"))
    await asyncio.sleep(0)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert cancelled == [1]  # its own flush ended with it
    assert await asyncio.wait_for(queued, 2.0) == "queued"


async def test_inline_flushes_still_linger_for_company_while_one_is_in_flight() -> None:
    """With ``linger_alone=False``, an inline flush in flight is the company worth
    waiting for: items that come meanwhile share one flush."""
    answer = asyncio.Event()
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if items == [0]:
            await answer.wait()
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(
        flush, max_items=3, concurrency=2, linger=0.05, linger_alone=False, inline=True
    )
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    assert await asyncio.gather(*(coalescer.submit(i) for i in (1, 2))) == [1, 2]
    assert batches == [[0], [1, 2]]
    answer.set()
    assert await first == 0


async def test_inline_never_skips_a_linger_that_waits_for_company_when_alone() -> None:
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(flush, max_items=3, linger=0.05, inline=True)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(3))) == [0, 1, 2]
    assert batches == [[0, 1, 2]]  # the first waited for the other two, as without inline
