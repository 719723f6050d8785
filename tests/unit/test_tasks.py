"""shared.tasks.cancel_and_wait against tasks that lose a cancel (Python 3.11's wait_for)."""

from __future__ import annotations

import asyncio
import sys

from shared.tasks import cancel_and_wait


async def _loses_one_cancel(log: list[str]) -> None:
    """What a loop does when a library's wait_for swallowed its cancel: goes on."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        log.append("lost")  # as if wait_for had returned a result instead
    while True:
        await asyncio.sleep(3600)


async def test_a_task_that_lost_its_cancel_is_cancelled_again() -> None:
    log: list[str] = []
    task = asyncio.create_task(_loses_one_cancel(log))
    await asyncio.sleep(0)
    # One cancel and an await, the usual way, never ends:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done and log == ["lost"]
    await asyncio.wait_for(cancel_and_wait(task, every=0.05), timeout=5)
    assert task.cancelled()


async def test_ended_tasks_and_none_are_fine_and_errors_are_not_raised() -> None:
    async def fails() -> None:
        raise ValueError("its own business")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    sleeper = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(failed, finished, None, sleeper)
    assert sleeper.cancelled() and isinstance(failed.exception(), ValueError)


async def test_python_3_11_wait_for_can_lose_a_cancel_the_reason_for_all_this() -> None:
    # The cancel arrives in the turn the inner future gets its result: on 3.11 wait_for
    # returns the result, and the task is not cancelled (3.12+ raises CancelledError).
    loop = asyncio.get_running_loop()
    inner = loop.create_future()
    after: list[str] = []

    async def waits() -> None:
        await asyncio.wait_for(inner, timeout=60)
        after.append("went on")
        await asyncio.sleep(3600)

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)
    inner.set_result(None)
    task.cancel()
    await asyncio.sleep(0.05)
    if sys.version_info < (3, 12):
        assert after == ["went on"] and not task.done()
    else:
        assert task.done()
    await cancel_and_wait(task, every=0.05)
    assert task.done()
