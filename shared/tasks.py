"""Stopping background tasks for sure.

``task.cancel()`` once and ``await task`` is the usual way, and it can hang for ever on
Python 3.11: ``asyncio.wait_for`` there returns its inner future's result when a cancel
arrives in the same turn as that result (CPython gh-86296, fixed in 3.12), so the cancel
is lost and the task goes on, into its next ``sleep``, as if nothing happened. Libraries we
use call ``wait_for`` (aiormq, redis-py's pools, PyMongo), so any loop of ours can be the
one that swallows it: a service's shutdown then waits for ever (seen as 120 s teardown
timeouts in the suite: the janitor's loop, "cancelling" in its sleep).
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_AFTER = 1.0


async def cancel_and_wait(
    *tasks: asyncio.Future[Any] | None, every: float = RECANCEL_AFTER
) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every ``every`` s
    any that is still running (a lost cancel). Their outcomes are not raised."""
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for running in pending:
            running.cancel()
        _done, pending = await asyncio.wait(pending, timeout=every)
    for ended in tasks:
        if ended is not None and ended.done() and not ended.cancelled():
            ended.exception()  # retrieved: no "exception was never retrieved" at exit
