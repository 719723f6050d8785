"""The carve counts of the download service's /metrics are bounded (services/download/census.py).

A scrape counts the carves (three counts and an index seek on MongoDB) only when the last
census is older than CARVE_CENSUS_TTL, concurrent scrapes share one census, and a census that
fails leaves the last values, with ``carve_census_age_seconds`` saying how old they are. The
censuses are counted on the wire: a PyMongo command listener on the service's own client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import ServerSelectionTimeoutError
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from devstack.services import scrape
from services.download import census as census_module
from services.download.census import CENSUS
from shared import metrics as metrics_module
from tests.stack import RunningApp, Stack

RECEIVING = 'carve_carves{status="receiving"}'
AGE = "carve_census_age_seconds"


class CarveQueries(CommandListener):
    """The census commands one client sent: counts of carves by status (``aggregate``) and
    the seek for the stalest receiving carve (``find``); the events relay's look at the
    outbox, also a find on ``carves``, is not one."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        body = event.command
        if body.get(event.command_name) != "carves":
            return
        stages = body.get("pipeline") or [{}]
        if event.command_name == "aggregate" and "status" in stages[0].get("$match", {}):
            self.names.append("count")
        elif event.command_name == "find" and body.get("filter") == {"status": "receiving"}:
            self.names.append("find")

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass

    @property
    def censuses(self) -> int:
        """Censuses sent: each is three counts and one find."""
        counts, finds = self.names.count("count"), self.names.count("find")
        assert counts == 3 * finds, self.names
        return finds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _receiving(stack: Stack, n: int) -> None:
    now = datetime.now(UTC)
    docs = [
        {"_id": str(uuid.uuid4()), "status": "receiving", "created_at": now, "updated_at": now}
        for _ in range(n)
    ]
    await stack.db["carves"].insert_many(docs)


async def _download(stack: Stack, ttl: float) -> tuple[RunningApp, CarveQueries, Clock]:
    queries, clock = CarveQueries(), Clock()
    download = await stack.start_download(mongo_listeners=[queries], census_ttl=ttl)
    download.app[CENSUS].clock = clock
    return download, queries, clock


async def test_scrapes_within_the_ttl_share_one_census(ingest_only: Stack) -> None:
    stack = ingest_only
    await _receiving(stack, 2)
    download, queries, clock = await _download(stack, ttl=30.0)

    for _ in range(5):
        metrics = await scrape(download.url)
        assert metrics[RECEIVING] == 2.0
        clock.now += 1.0
    assert queries.censuses == 1

    # A new carve is not seen until the counts are CARVE_CENSUS_TTL old; the age says so.
    await _receiving(stack, 1)
    clock.now += 20.0  # 25 s after the census
    metrics = await scrape(download.url)
    assert metrics[RECEIVING] == 2.0
    assert metrics[AGE] == 25.0
    assert queries.censuses == 1

    clock.now += 5.0  # 30 s: counted again
    metrics = await scrape(download.url)
    assert metrics[RECEIVING] == 3.0
    assert metrics[AGE] == 0.0
    assert queries.censuses == 2


async def test_concurrent_scrapes_wait_for_the_same_census(ingest_only: Stack) -> None:
    stack = ingest_only
    await _receiving(stack, 1)
    download, queries, _ = await _download(stack, ttl=0.0)  # no reuse: each scrape counts
    census = download.app[CENSUS]

    # Eight scrape hooks at once (what eight concurrent scrapes run): one census.
    await asyncio.gather(*(census.refresh() for _ in range(8)))
    assert queries.censuses == 1
    # Eight scrapes over HTTP, concurrent (as they arrive), never more than one census each.
    results = await asyncio.gather(*(scrape(download.url) for _ in range(8)))
    assert all(m[RECEIVING] == 1.0 for m in results)
    assert 2 <= queries.censuses <= 9
    # One after the other, with a TTL of 0: one census each.
    before = queries.censuses
    for _ in range(3):
        await scrape(download.url)
    assert queries.censuses == before + 3


async def test_a_failed_census_keeps_the_last_counts_and_waits_a_ttl(
    ingest_only: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = ingest_only
    await _receiving(stack, 2)
    download, _, clock = await _download(stack, ttl=30.0)
    assert (await scrape(download.url))[RECEIVING] == 2.0

    tries = 0

    async def unreachable(db: Any) -> Any:
        nonlocal tries
        tries += 1
        raise ServerSelectionTimeoutError("MongoDB away")

    counting = census_module.count_carves
    monkeypatch.setattr(census_module, "count_carves", unreachable)
    await _receiving(stack, 1)
    clock.now += 40.0
    started = time.monotonic()
    metrics = await scrape(download.url)
    assert time.monotonic() - started < 2.0
    assert tries == 1
    assert metrics[RECEIVING] == 2.0, "the last counts stay"
    assert metrics[AGE] == 40.0
    # The next scrapes within the TTL do not try again.
    clock.now += 10.0
    metrics = await scrape(download.url)
    assert tries == 1
    assert metrics[AGE] == 50.0

    monkeypatch.setattr(census_module, "count_carves", counting)
    clock.now += 20.0  # 30 s after the failure
    metrics = await scrape(download.url)
    assert metrics[RECEIVING] == 3.0
    assert metrics[AGE] == 0.0


async def test_a_slow_census_outlives_the_scrape_that_started_it(
    ingest_only: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape stops waiting at the hooks' timeout; the census goes on, and the next scrape
    has its counts (before: each scrape's timeout cancelled a slow count, never finished)."""
    stack = ingest_only
    await _receiving(stack, 2)
    download, queries, _ = await _download(stack, ttl=30.0)
    monkeypatch.setattr(metrics_module, "HOOK_TIMEOUT", 0.2)
    gate = asyncio.Event()
    counting = census_module.count_carves

    async def slow(db: Any) -> Any:
        await gate.wait()
        return await counting(db)

    monkeypatch.setattr(census_module, "count_carves", slow)
    started = time.monotonic()
    metrics = await scrape(download.url)
    assert time.monotonic() - started < 2.0
    assert RECEIVING not in metrics  # not counted yet
    assert metrics['carve_check_up{check="mongodb"}'] == 1.0
    gate.set()
    for _ in range(50):
        if queries.censuses == 1 and download.app[CENSUS].running is None:
            break
        await asyncio.sleep(0.05)
    metrics = await scrape(download.url)
    assert metrics[RECEIVING] == 2.0
    assert queries.censuses == 1
