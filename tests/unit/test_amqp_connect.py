"""``connect_any`` cancelled while it connects leaves no task behind that outlives a
shutdown (the suite's session event loop once waited for ever for one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.amqp_hosts import connect_any


@pytest.fixture
async def silent_broker() -> AsyncIterator[str]:
    """A listener that accepts and never says a word: the AMQP handshake waits (like a
    broker that stalled, or one still starting)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_connect_cancelled_midway_leaves_no_task_that_ignores_a_cancel(
    silent_broker: str,
) -> None:
    before = asyncio.all_tasks()
    connecting = asyncio.create_task(
        connect_any(silent_broker, timeout=30, client_properties={}), name="connect"
    )
    await asyncio.sleep(0.3)  # inside the handshake, which the listener never answers
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    # What a shutting-down event loop does (asyncio.Runner.close): cancel each task left
    # once, then wait for them all.
    left = asyncio.all_tasks() - before
    for task in left:
        task.cancel()
    pending: set[asyncio.Task[object]] = set()
    try:
        if left:
            _, pending = await asyncio.wait(left, timeout=5)
        assert not pending, f"tasks that survived their cancel: {pending}"
    finally:
        for _ in range(20):  # a failing run must not leave them to the session's loop
            for task in pending:
                task.cancel()
            if pending:
                _, pending = await asyncio.wait(pending, timeout=0.5)
