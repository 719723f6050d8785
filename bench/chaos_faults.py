"""The faults of ``bench.chaos``: one every 5-15 s, each drawn from a seeded RNG.

Every fault is a process or broker event a production system sees: a service
SIGKILLed or SIGTERMed and started again, an assembler frozen (SIGSTOP) for a
few seconds, Redis restarted, the vhost's broker connections closed, a memory
alarm for a few seconds, the database SIGKILLed and started again.

On the HA stack (``bench.chaos --ha``) the backend faults are those of the failover
drills instead (``HA_FAULTS``): the Redis primary killed (Sentinel promotes the replica),
the block queue's leader node killed or paused, a rolling restart of the three RabbitMQ
nodes, a memory alarm on one node; the service faults stay.
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.chaos_services import VHOST, Service
from bench.drill_faults import (
    kill_rabbit_leader,
    kill_redis_primary,
    pause_rabbit_node,
    rolling_restart,
)
from devstack.ha import HaBackends
from devstack.servers import RabbitServer, Server


@dataclass
class Targets:
    ingests: list[Service]
    assemblers: list[Service]
    redis: Server | None
    rabbit: RabbitServer
    mongo: Server
    # On the HA stack (``--ha``): the faults of ``HA_FAULTS`` instead of those of one node.
    ha: HaBackends | None = None
    queue: str = "carve.blocks"


@dataclass
class FaultLog:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self, at: float, kind: str, what: str) -> None:
        """A fault begun ``at`` seconds into the run."""
        self.counts[kind] += 1
        line = f"{at:7.1f}s  {kind:<18} {what}"
        self.lines.append(line)
        print("fault " + line, file=sys.stderr, flush=True)


Fault = Callable[[Targets, random.Random], Awaitable[str]]


async def _signal_service(group: list[Service], rng: random.Random, sig: int) -> str:
    service = rng.choice(group)
    await service.restart(sig)
    return f"{service.label} {signal.Signals(sig).name}, restarted"


async def kill_ingest(t: Targets, rng: random.Random) -> str:
    return await _signal_service(t.ingests, rng, signal.SIGKILL)


async def term_ingest(t: Targets, rng: random.Random) -> str:
    return await _signal_service(t.ingests, rng, signal.SIGTERM)


async def kill_assembler(t: Targets, rng: random.Random) -> str:
    return await _signal_service(t.assemblers, rng, signal.SIGKILL)


async def term_assembler(t: Targets, rng: random.Random) -> str:
    return await _signal_service(t.assemblers, rng, signal.SIGTERM)


async def freeze_assembler(t: Targets, rng: random.Random) -> str:
    service = rng.choice(t.assemblers)
    pause = rng.uniform(2.0, 6.0)
    service.send(signal.SIGSTOP)
    service.stopped = True
    try:
        await asyncio.sleep(pause)
    finally:
        service.send(signal.SIGCONT)
        service.stopped = False
    return f"{service.label} SIGSTOP for {pause:.1f} s, SIGCONT"


async def restart_redis(t: Targets, rng: random.Random) -> str:
    assert t.redis is not None
    await asyncio.to_thread(t.redis.stop)  # SIGTERM: Redis writes its file and exits
    await asyncio.to_thread(t.redis.start)
    return "redis SIGTERM, restarted (append-only file)"


async def close_connections(t: Targets, rng: random.Random) -> str:
    await asyncio.to_thread(
        t.rabbit.ctl, "close_all_connections", "--vhost", VHOST, "chaos: connections closed"
    )
    return f"every connection of vhost {VHOST} closed by the broker"


async def memory_alarm(t: Targets, rng: random.Random) -> str:
    lasts = rng.uniform(2.0, 5.0)
    await asyncio.to_thread(t.rabbit.ctl, "set_vm_memory_high_watermark", "0")
    try:
        await asyncio.sleep(lasts)
    finally:
        await asyncio.to_thread(t.rabbit.ctl, "set_vm_memory_high_watermark", "0.4")
    return f"memory alarm for {lasts:.1f} s"


async def kill_database(t: Targets, rng: random.Random) -> str:
    await asyncio.to_thread(t.mongo.stop, signal.SIGKILL)
    await asyncio.to_thread(t.mongo.start)
    return "secantusdb SIGKILL, restarted (--sync-on-commit)"


FAULTS: dict[str, Fault] = {
    "kill_ingest": kill_ingest,
    "term_ingest": term_ingest,
    "kill_assembler": kill_assembler,
    "term_assembler": term_assembler,
    "freeze_assembler": freeze_assembler,
    "restart_redis": restart_redis,
    "close_connections": close_connections,
    "memory_alarm": memory_alarm,
    "kill_database": kill_database,
}


def _on_ha(fault: Callable[[HaBackends, str, float], Awaitable[str]], lasts: float) -> Fault:
    async def run(t: Targets, rng: random.Random) -> str:
        assert t.ha is not None
        return await fault(t.ha, t.queue, lasts)

    return run


async def ha_memory_alarm(t: Targets, rng: random.Random) -> str:
    assert t.ha is not None
    t = Targets(t.ingests, t.assemblers, None, t.ha.rabbit.nodes[0], t.mongo)
    return await memory_alarm(t, rng) + " on one node of three"


# On the HA stack: the services' faults, and each backend's node-level faults
# (``bench.drill_faults``) instead of a single node's restart.
HA_FAULTS: dict[str, Fault] = {
    **{k: v for k, v in FAULTS.items() if k.endswith(("_ingest", "_assembler"))},
    "memory_alarm": ha_memory_alarm,
    "kill_redis_primary": _on_ha(kill_redis_primary, 0),
    "kill_rabbit_leader": _on_ha(kill_rabbit_leader, 2.0),
    "pause_rabbit_node": _on_ha(pause_rabbit_node, 5.0),
    "rolling_restart": _on_ha(rolling_restart, 1.0),
}


async def inject(
    targets: Targets, rng: random.Random, until: float, log: FaultLog, started: float
) -> None:
    """Every 5-15 s until ``until`` (monotonic), one fault; a fault that fails is logged."""
    while True:
        wait = rng.uniform(5.0, 15.0)
        if time.monotonic() + wait >= until:
            return
        await asyncio.sleep(wait)
        faults = FAULTS if targets.ha is None else HA_FAULTS
        kind = rng.choice(sorted(faults))
        at = time.monotonic() - started
        try:
            what = await faults[kind](targets, rng)
        except Exception as exc:  # the run goes on; a fault that could not be done is reported
            log.errors.append(f"{kind}: {exc!r}")
            what = f"FAILED to inject: {exc!r}"
        log.note(at, kind, what)
