"""A watchdog for slow teardowns: when a block is still running after ``after`` seconds,
every asyncio task of the loop is printed to stderr with its stack and the chain of
awaitables it is suspended on, so a hang explains itself instead of ending in a bare
pytest-timeout dump (which shows only threads, and the main thread in select())."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where a task waits: each coroutine or generator it awaits, innermost last."""
    lines: list[str] = []
    obj: Any = task.get_coro()
    for _ in range(64):  # bounded: a cycle or a very deep chain must not hang the dump
        if obj is None:
            break
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if code is not None:
            where = f"{code.co_filename}:{frame.f_lineno if frame else code.co_firstlineno}"
            lines.append(f"    {code.co_qualname} at {where}")
        else:
            lines.append(f"    {obj!r}")
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            # A future or task at the bottom: say what it is (a Task names its own coro).
            break
        obj = nxt
    return lines


def dump_tasks(title: str, file: Any = None) -> str:
    """Every task of the running loop with its stack and await chain, as one text."""
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    print(f"\n===== {title}: {len(tasks)} asyncio tasks =====", file=out)
    current = asyncio.current_task()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        if task is current:
            continue
        print(f"--- {task!r}", file=out)
        with contextlib.suppress(Exception):
            task.print_stack(file=out)
        print("  awaiting:", file=out)
        for line in _await_chain(task):
            print(line, file=out)
    print("===== end of tasks =====", file=out)
    text = out.getvalue()
    print(text, file=file or sys.stderr, flush=True)
    # pytest shows captured stderr only once the test is reported, and not at all when the
    # session itself then hangs: CARVE_HANG_DUMP names a file that gets it at once too.
    if path := os.environ.get("CARVE_HANG_DUMP"):
        with open(path, "a", encoding="utf-8") as sink:
            sink.write(text)
    return text


@contextlib.asynccontextmanager
async def watchdog(title: str, after: float = 60.0) -> AsyncIterator[None]:
    """Dump every task once if the block is still running ``after`` seconds in; changes
    nothing about the block itself (it is not cancelled, its outcome is its own)."""

    async def bark() -> None:
        await asyncio.sleep(after)
        dump_tasks(f"{title} still running after {after:g} s")

    dog = asyncio.create_task(bark(), name=f"watchdog: {title}")
    try:
        yield
    finally:
        # Not awaited: awaiting it here could swallow a cancellation meant for the block.
        dog.cancel()


@contextlib.contextmanager
def thread_watchdog(title: str, after: float = 60.0) -> Iterator[None]:
    """The same dump for synchronous code that drives a loop (pytest's teardowns, where
    pytest-asyncio's runner cancels the session's remaining tasks and waits for them): a
    timer thread asks every running loop to dump its tasks from its own thread."""

    def bark() -> None:
        loops = [
            o
            for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()
        ]
        for loop in loops:
            loop.call_soon_threadsafe(dump_tasks, f"{title} still running after {after:g} s")

    timer = threading.Timer(after, bark)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
