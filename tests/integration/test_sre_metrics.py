"""The metrics the alerts and the dashboard need (deploy/observability), moving on real servers.

Backends up and down (``carve_check_up``), retries by backend, the assembler's lag and the
depth of the block queue and its dead-letter queue, carves by status and the idle time of the
stalest receiving carve, and the download's 503s when Vault is away.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import aiohttp

from clients.osquery_sim import build_synthetic_archive, carve
from devstack.backends import Backends
from devstack.ports import HOST, free_port
from devstack.services import scrape
from shared.events import EventType
from shared.events.envelope import encode_event
from shared.events.outbox import event_entry
from shared.queue import Block, encode
from tests.stack import Stack
from tests.triage import write_library
from tests.uploads import Upload, random_bytes

KiB = 1024


async def _scrape_until(
    url: str, sample: str, value: float, timeout: float = 20.0, *, at_least: bool = False
) -> dict[str, float]:
    """The service's metrics once ``sample`` is ``value`` (or more, ``at_least``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen = None
    while asyncio.get_running_loop().time() < deadline:
        metrics = await scrape(url)
        seen = metrics.get(sample)
        if seen is not None and (seen >= value if at_least else seen == value):
            return metrics
        await asyncio.sleep(0.2)
    raise AssertionError(f"{sample} is {seen}, not {value}, after {timeout} s")


async def test_assembler_lag_queue_depths_and_dead_letters(
    stack: Stack, names: dict[str, str], backends: Backends, tmp_path: Path
) -> None:
    queue = names["amqp_queue"]
    assembler = stack.apps[1].url
    before = await scrape(assembler)
    assert before['carve_check_up{check="mongodb"}'] == 1.0
    assert before['carve_check_up{check="rabbitmq"}'] == 1.0
    assert before[f'carve_queue_messages{{queue="{queue}.dead"}}'] == 0.0
    assert before["carve_assembler_lag_seconds_count"] == 0.0

    connection = await aio_pika.connect_robust(backends.rabbit.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        good = encode([Block("x", 0, 1, 4, 4, b"abcd")])
        poison = aio_pika.Message(good.body, headers={"format": "carve-blocks/0"}, delivery_mode=2)
        await channel.default_exchange.publish(poison, routing_key=queue)
    finally:
        await connection.close()
    archive = build_synthetic_archive(40 * KiB, tmp_path, carve_guid=str(uuid.uuid4()))
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=4 * KiB)
    assert result.ok
    await stack.wait_complete(result.carve_id)

    await _scrape_until(assembler, f'carve_queue_messages{{queue="{queue}.dead"}}', 1.0)
    after = await scrape(assembler)
    assert after[f'carve_queue_messages{{queue="{queue}"}}'] == 0.0
    assert after['carve_assembler_blocks_total{outcome="dead_lettered"}'] == 1.0
    # Every block message was timed from its publish (the poison one too: it was handled).
    assert after["carve_assembler_lag_seconds_count"] >= 2.0
    # On loopback a block waits well under 5 s (whole seconds: the AMQP timestamp).
    assert (
        after['carve_assembler_lag_seconds_bucket{le="5.0"}']
        == (after["carve_assembler_lag_seconds_count"])
    )


async def test_mongodb_down_shows_in_checks_and_retries_by_backend(
    stack: Stack, backends: Backends
) -> None:
    assembler, ingest = stack.apps[1].url, stack.apps[0].url
    up = Upload(stack, random_bytes(8 * 4 * KiB, 11), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        backends.mongo.stop()
        try:
            await up.send_all(http, range(up.count))  # Redis and RabbitMQ take them
            # The assembler retries once its server selection gave up (CARVE_MONGO_TIMEOUT).
            retried = 'carve_backend_unavailable_total{backend="mongodb"}'
            down = await _scrape_until(assembler, retried, 1.0, at_least=True)
            ingest_down = await scrape(ingest)
        finally:
            backends.mongo.start()
    assert down['carve_check_up{check="mongodb"}'] == 0.0
    assert down['carve_check_up{check="rabbitmq"}'] == 1.0
    assert ingest_down['carve_check_up{check="mongodb"}'] == 0.0
    assert ingest_down['carve_check_up{check="redis"}'] == 1.0
    doc = await stack.wait_complete(up.carve_id)
    assert doc["sha256"] == up.sha256
    await _scrape_until(assembler, 'carve_check_up{check="mongodb"}', 1.0)


async def test_download_counts_carves_and_shows_stuck_receiving(ingest_only: Stack) -> None:
    stack = ingest_only
    download = await stack.start_download(census_ttl=0)  # each scrape counts (test_census.py)
    empty = await scrape(download.url)
    assert empty['carve_carves{status="receiving"}'] == 0.0
    assert empty["carve_receiving_idle_seconds"] == 0.0
    assert empty['carve_check_up{check="vault"}'] == 1.0

    ups = [Upload(stack, random_bytes(3 * 4 * KiB, n), 4 * KiB) for n in range(3)]
    async with aiohttp.ClientSession() as http:
        for up in ups:
            await up.start(http)
    # One carve has not moved for two hours (an assembler gone, a janitor gone).
    stale = datetime.now(UTC) - timedelta(hours=2)
    await stack.db["carves"].update_one({"_id": ups[0].carve_id}, {"$set": {"updated_at": stale}})
    await stack.db["carves"].update_one(
        {"_id": ups[1].carve_id}, {"$set": {"status": "failed", "failed_at": stale}}
    )
    now = await scrape(download.url)
    assert now['carve_carves{status="receiving"}'] == 2.0
    assert now['carve_carves{status="failed"}'] == 1.0
    assert now['carve_carves{status="complete"}'] == 0.0
    assert 7200 <= now["carve_receiving_idle_seconds"] < 7260

    await stack.start_assembler()
    async with aiohttp.ClientSession() as http:
        await ups[2].send_all(http, range(ups[2].count))
    await stack.wait_complete(ups[2].carve_id)
    await _scrape_until(download.url, 'carve_carves{status="complete"}', 1.0)


async def test_vault_away_shows_in_checks_and_503s_by_backend(stack: Stack) -> None:
    nobody = f"http://{HOST}:{free_port()}"
    download = await stack.start_download(vault_addr=nobody, vault_timeout=1.0)
    async with aiohttp.ClientSession() as http:
        headers = {"X-Vault-Token": "s.not-checked-without-vault"}
        async with http.get(download.url + "/api/v1/carves", headers=headers) as resp:
            assert resp.status == 503, await resp.text()
    metrics = await scrape(download.url)
    assert metrics['carve_check_up{check="vault"}'] == 0.0
    assert metrics['carve_check_up{check="mongodb"}'] == 1.0
    assert metrics['carve_backend_unavailable_total{backend="vault"}'] == 1.0


async def test_triage_shows_its_backlog_while_its_rules_are_broken(
    ingest_only: Stack, backends: Backends, tmp_path: Path
) -> None:
    """Rules that do not compile: scans wait for a fix (one held by the prefetch), the events
    behind it wait in the queue, and the metrics say both."""
    stack = ingest_only
    library = write_library(tmp_path / "lib", rules={"broken.yar": "rule broken { condition: "})
    triage = await stack.start_triage(**library, triage_workers=1)
    queue = stack.env["CARVE_TRIAGE_QUEUE"]
    connection = await aio_pika.connect_robust(backends.rabbit.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for _ in range(4):
            carve_id = str(uuid.uuid4())
            entry = event_entry(EventType.COMPLETED, {"id": carve_id}, datetime.now(UTC))
            body = encode_event(entry, carve_id, "urn:test")
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue)
    finally:
        await connection.close()
    metrics = await _scrape_until(triage.url, "carve_triage_queue_messages", 3.0)
    assert metrics["carve_triage_rules_ok"] == 0.0
    assert metrics['carve_check_up{check="rules"}'] == 0.0
    assert metrics['carve_check_up{check="rabbitmq"}'] == 1.0
    assert metrics["carve_triage_scan_seconds_count"] == 0.0
