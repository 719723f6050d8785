"""Audit rows as a test should read them: each is written just after its answer was sent, so
the last request's row may not be there the moment the client has its answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase


async def settled_rows(
    db: AsyncDatabase[dict[str, Any]], query: Mapping[str, Any], *, quiet: float = 0.3
) -> list[dict[str, Any]]:
    """The rows matching ``query`` once their count has not changed for ``quiet`` seconds
    (at most 10 s in all)."""
    audit = db["audit"]
    deadline = time.monotonic() + 10
    count = await audit.count_documents(query)
    steady_since = time.monotonic()
    while time.monotonic() - steady_since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = await audit.count_documents(query)
        if now != count:
            count, steady_since = now, time.monotonic()
    return await audit.find(query).to_list()
