"""The services a drill runs against the HA stack, and the settings that make it settle fast."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bench.chaos_services import Service, round_robin_front
from shared.protocol import max_block_body

MiB = 1024 * 1024
# Shorter than the defaults so a drill settles in seconds: a carve whose host gave up is
# failed after 10 s without a block; one that lost its "fully received" trigger (a lost
# Redis mark) is finalized once quiet for 3 s.
SHORT = {
    "CARVE_SESSION_IDLE_TIMEOUT": "10",
    "CARVE_FINALIZE_GRACE": "3",
    "CARVE_JANITOR_INTERVAL": "1",
    "CARVE_JANITOR_LEASE": "30",
    "CARVE_DRAIN_TIMEOUT": "5",
    "CARVE_LOG_LEVEL": "WARNING",
    # Each host carves back to back, as no real host does: not what a drill measures.
    "CARVE_MAX_ACTIVE_CARVES_PER_HOST": "1000",
    "CARVE_MAX_STARTS_PER_HOST_PER_MINUTE": "1000",
}


@contextlib.asynccontextmanager
async def services(env: dict[str, str], root: Path, replicas: int) -> AsyncIterator[str]:
    """Ingests behind a round-robin front, assemblers and a janitor; yields the front's URL."""
    logdir = root / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ingests = [Service("ingest", f"ingest-{i}", env, logdir) for i in range(replicas)]
    others = [Service("assembler", f"assembler-{i}", env, logdir) for i in range(replicas)]
    others.append(Service("janitor", "janitor", env, logdir))
    running = [*ingests, *others]
    for service in running:
        service.start()
    try:
        await asyncio.gather(*(s.wait_ready(90) for s in running))
        limit = max_block_body(MiB) + 4096
        async with round_robin_front([s.url for s in ingests], limit) as front:
            yield front
    finally:
        await asyncio.gather(*(s.stop() for s in running), return_exceptions=True)
