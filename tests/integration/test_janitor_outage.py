"""A Redis outage is a backend outage for the janitor too: no traceback, the documented exit."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from devstack import ROOT
from devstack.ports import HOST, free_port
from devstack.services import scrape
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

KiB = 1024


def dead_redis() -> str:
    return f"redis://{HOST}:{free_port()}/0"  # nobody listens there


async def test_janitor_once_exits_1_without_a_traceback_when_redis_is_down(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        up = Upload(stack, random_bytes(3 * 4 * KiB, 5), 4 * KiB)
        await up.start(http)
        await up.send_all(http, [0])  # a receiving carve, so the sweep asks Redis about it
    env = {
        **stack.env,
        "CARVE_REDIS_URL": dead_redis(),
        "CARVE_FINALIZE_GRACE": "0",
        "CARVE_REDIS_TIMEOUT": "1",
        "PATH": str(Path(sys.executable).parent),
    }
    await asyncio.sleep(0.1)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.janitor", "--once"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert done.stdout == b""  # no summary: the sweep did not finish
    assert "Traceback" not in stderr
    assert "janitor sweep interrupted, the next one resumes: Redis unavailable" in stderr
    doc = await stack.carve_doc(up.carve_id)
    assert doc is not None and doc["status"] == "receiving"  # nothing decided without Redis


async def test_janitor_loop_logs_a_warning_not_a_traceback_when_redis_is_down(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    janitor = await stack.start_janitor(
        loop=True, redis_url=dead_redis(), redis_timeout=1.0, janitor_interval=0.2
    )
    deadline = asyncio.get_running_loop().time() + 20
    while asyncio.get_running_loop().time() < deadline:
        metrics = await scrape(janitor.url)
        if metrics.get('carve_janitor_sweeps_total{outcome="error"}', 0) >= 2:
            break
        await asyncio.sleep(0.1)
    assert metrics['carve_janitor_sweeps_total{outcome="error"}'] >= 2
    janitor_records = [r for r in caplog.records if r.name.startswith("services.janitor")]
    assert janitor_records
    assert all(r.exc_info is None for r in janitor_records), [r.message for r in janitor_records]
    assert any("Redis unavailable" in r.getMessage() for r in janitor_records)
