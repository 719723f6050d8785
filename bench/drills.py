"""Failover drills: real multi-node backends on loopback, one node broken under carving hosts.

On the highly available stack (``devstack.ha``: three RabbitMQ nodes; a Redis primary and
replica with three Sentinels; a Redis Cluster of three primaries and three replicas),
each drill starts the services afresh (two ingests behind a round-robin front, two
assemblers, a janitor; their own database, queue and key prefix), lets ``--hosts``
simulated osquery hosts carve (half with 8 KiB blocks, half with 1 MiB blocks, each host
carving again and again), breaks one node (``bench.drill_faults``), keeps the load on a
little longer, then stops the hosts and checks every carve (``bench.drill_hosts``).

For each drill it prints: acknowledged blocks lost (must be 0), wrong bytes (0), carves
stuck receiving (0), errors hosts saw and for how long, how long after the fault every
carve that was in flight was complete or failed, and what osquery concluded per host.
It exits 1 on any loss, wrong byte, stuck carve or contradiction::

    .venv/bin/python -m bench.drills --smoke           # 4 hosts, a Redis Cluster failover
    .venv/bin/python -m bench.drills --hosts 30 --json docs/benchmarks/ha-latest.json

``--throughput`` adds the comparison of docs/benchmarks/ha.md: upload throughput at
8 KiB and 1 MiB on single nodes, on the three-node RabbitMQ and on the Redis Cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from pymongo import AsyncMongoClient

from bench.cli import work_root
from bench.drill_faults import DRILLS, Drill
from bench.drill_hosts import Fleet, HostCarve, check, settle
from bench.drill_stack import SHORT, services
from bench.drill_throughput import compare
from devstack.ha import HaBackends, running_ha


@dataclass(frozen=True)
class Mode:
    hosts: int
    small_blocks: int
    large_blocks: int
    lead: float  # seconds of carving before the fault
    tail: float  # seconds of carving after the node is back
    fault_seconds: float  # how long a node stays down or paused
    replicas: int  # ingests and assemblers each
    drills: tuple[str, ...]
    settle: float = 300.0  # seconds the carves may take to end once the hosts stopped


LONG = Mode(30, 200, 8, 4.0, 4.0, 10.0, 2, tuple(DRILLS))
# The suite's run: one drill (the suite's other HA tests cover Sentinel and a lost node).
SMOKE = Mode(4, 60, 3, 1.0, 0.5, 2.0, 1, ("redis_cluster_failover",), 60.0)


def drill_env(ha: HaBackends, drill: Drill) -> dict[str, str]:
    tag = drill.name.replace("_", "-")
    return {
        **ha.env(drill.redis),  # type: ignore[arg-type]
        **SHORT,
        "CARVE_MONGO_DB": f"drill_{drill.name}",
        "CARVE_AMQP_QUEUE": f"carve.blocks.{tag}",
        "CARVE_EVENTS_EXCHANGE": f"carve.events.{tag}",
        "CARVE_REDIS_KEY_PREFIX": f"{tag}:",
    }


async def run_drill(ha: HaBackends, drill: Drill, mode: Mode, root: Path) -> dict[str, Any]:
    env = drill_env(ha, drill)
    workdir = root / drill.name
    fleet = Fleet(mode.hosts, mode.small_blocks, mode.large_blocks, workdir / "archives")
    stop = asyncio.Event()
    async with services(env, workdir, mode.replicas) as front:
        hosts = asyncio.create_task(fleet.run(front, stop))
        await asyncio.sleep(mode.lead)
        fault_wall, fault_at = datetime.now(UTC), time.monotonic()
        what = await drill.fault(ha, env["CARVE_AMQP_QUEUE"], mode.fault_seconds)
        fault_end = time.monotonic()
        await asyncio.sleep(mode.tail)
        stop.set()
        await asyncio.wait_for(hosts, timeout=300)
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            env["CARVE_MONGO_URL"], tz_aware=True
        )
        try:
            db = mongo[env["CARVE_MONGO_DB"]]
            # The assemblers may have a backlog to store (MongoDB is the slowest part here).
            await settle(db, [c.result.carve_id for c in fleet.carves], timeout=mode.settle)
            verdict = await check(db, fleet.carves)
            queue = await asyncio.to_thread(ha.rabbit.queue_state, env["CARVE_AMQP_QUEUE"])
        finally:
            await mongo.close()
    # The carves started before the node was back (and given a session: a start refused
    # during the fault has no carve on the server).
    in_flight = [c for c in fleet.carves if c.started < fault_end and c.result.session_id]
    errors, error_seconds = fleet.clock.window(fault_at)
    return {
        "drill": drill.name,
        "fault": what,
        "redis": drill.redis,
        "hosts": mode.hosts,
        "carves": verdict.carves,
        "carves_in_flight_at_fault": len(in_flight),
        "acked_blocks": verdict.acked_blocks,
        "acked_blocks_lost": verdict.acked_lost,
        "wrong_bytes": verdict.wrong_bytes,
        "stuck": verdict.stuck,
        "host_errors": errors,
        "host_error_seconds": round(error_seconds, 1),
        "fault_seconds": round(fault_end - fault_at, 1),
        "settled_after_fault_seconds": _settled(in_flight, verdict.ends, fault_wall),
        "max_end_after_last_reply_seconds": _lag(fleet.carves, verdict.ends),
        "osquery": dict(verdict.osquery),
        "osquery_per_host": _per_host(verdict.per_host),
        "queue_at_check": queue,
        "contradictions": verdict.contradictions,
    }


def _settled(in_flight: list[HostCarve], ends: dict[str, Any], fault: datetime) -> float | None:
    """Seconds from the fault until the last carve in flight then was complete or failed."""
    times = [ends[c.result.carve_id] for c in in_flight if c.result.carve_id in ends]
    if len(times) < len(in_flight):
        return None  # some never ended: "stuck" says how many
    return round(max((t - fault).total_seconds() for t in times), 1) if times else 0.0


def _lag(carves: list[HostCarve], ends: dict[str, Any]) -> float | None:
    """The longest a carve took to be complete or failed after its host's last reply."""
    lags = [(ends[c.result.carve_id] - c.finished).total_seconds() for c in carves
            if c.result.carve_id in ends]  # fmt: skip
    return round(max(lags), 1) if lags else None


def _per_host(per_host: dict[int, Any]) -> dict[str, int]:
    """How many hosts concluded what: "all SUCCESS", or "k SUCCESS, m failed"."""
    kinds: dict[str, int] = {}
    for counts in per_host.values():
        key = (
            "all SUCCESS"
            if not counts.get("failed")
            else f"{counts.get('SUCCESS', 0)} SUCCESS, {counts['failed']} failed"
        )
        kinds[key] = kinds.get(key, 0) + 1
    return dict(sorted(kinds.items()))


def print_drill(row: dict[str, Any]) -> None:
    settled = row["settled_after_fault_seconds"]
    print(
        f"{row['drill']:<24} lost={row['acked_blocks_lost']} wrong={row['wrong_bytes']} "
        f"stuck={row['stuck']} carves={row['carves']} acked_blocks={row['acked_blocks']} "
        f"host_errors={row['host_errors']} over {row['host_error_seconds']} s "
        f"settled={settled if settled is not None else 'never'} s "
        f"end_after_reply<={row['max_end_after_last_reply_seconds']} s "
        f"osquery={json.dumps(row['osquery'], sort_keys=True)}",
        flush=True,
    )
    print(f"  fault: {row['fault']} ({row['fault_seconds']} s)")
    print(f"  hosts: {json.dumps(row['osquery_per_host'])}")
    if row["contradictions"]:
        print(f"  block queue at the check: {row['queue_at_check']}")
    for line in row["contradictions"][:20]:
        print(f"  CONTRADICTION {line}")


def failed(row: dict[str, Any]) -> bool:
    return bool(
        row["acked_blocks_lost"] or row["wrong_bytes"] or row["stuck"] or row["contradictions"]
    )


async def run_drills(
    ha: HaBackends, mode: Mode, names: list[str], root: Path
) -> list[dict[str, Any]]:
    """The drills ``names`` one after another on a running HA stack, each printed as it ends."""
    rows = []
    for name in names:
        row = await run_drill(ha, DRILLS[name], mode, root)
        print_drill(row)
        rows.append(row)
    return rows


async def drills(args: argparse.Namespace, root: Path) -> int:
    mode = SMOKE if args.smoke else LONG
    if args.hosts:
        mode = dataclasses.replace(mode, hosts=args.hosts)
    chosen = [d for d in (args.only.split(",") if args.only else mode.drills) if d]
    if args.no_drills:
        chosen = []
    unknown = set(chosen) - set(DRILLS)
    if unknown:
        print(f"no such drill: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with running_ha(root / "backends", redis_cluster=True) as ha:
        print(f"ha stack up in {time.monotonic() - started:.0f} s", flush=True)
        rows = await run_drills(ha, mode, chosen, root)
        throughput: list[dict[str, Any]] = []
        if args.throughput:
            throughput = await compare(ha, root / "throughput", mode.hosts, mode.replicas, SHORT)
    bad = [row["drill"] for row in rows if failed(row)]
    if args.json:
        figures = {"mode": "smoke" if args.smoke else "long", "drills": rows}
        figures["throughput"] = throughput
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"drills={len(rows)} hosts={mode.hosts} failed={len(bad)} "
        f"lost={sum(r['acked_blocks_lost'] for r in rows)} "
        f"wrong={sum(r['wrong_bytes'] for r in rows)} stuck={sum(r['stuck'] for r in rows)} "
        f"seconds={time.monotonic() - started:.0f}",
        flush=True,
    )
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.drills", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="4 hosts, one drill (the suite)")
    parser.add_argument("--hosts", type=int, default=0, help="hosts (default 30; smoke 4)")
    parser.add_argument("--only", default="", help=f"comma-separated, of {', '.join(DRILLS)}")
    parser.add_argument("--throughput", action="store_true", help="also the throughput ratios")
    parser.add_argument("--no-drills", action="store_true", help="no drill (with --throughput)")
    parser.add_argument("--json", type=Path, help="write every figure there")
    parser.add_argument("--workdir", type=Path, help="keep data and logs here")
    args = parser.parse_args(argv)
    with work_root(args.workdir, "carve-drills-") as root:
        return uvloop.run(drills(args, root))


if __name__ == "__main__":
    sys.exit(main())
