"""A seeded, randomized fault run: real servers, simulated osquery hosts, a fault every 5-15 s.

Two ingests (behind a round-robin front, as NGINX with two upstreams), two
assemblers, a looping janitor and a download service run against Redis with an
append-only file, a RabbitMQ vhost and SecantusDB on disk (``--sync-on-commit``).
30-50 simulated osquery hosts (5.22 and 5.23) carve in overlapping waves, blocks
of 8 KiB to 1 MiB, some zstd. Meanwhile ``bench.chaos_faults`` injects a random
fault every 5-15 s. Afterwards every carve is checked against what its host
recorded in its own ``carves`` table:

* host SUCCESS: the carve is ``complete`` with the host's SHA-256, and the bytes read
  through the download service and straight from GridFS hash to it;
* host failure: the carve is ``failed`` with a reason, or ``complete`` with the exact bytes
  (or the server never had it: the start itself failed);
* no carve stays ``receiving``; no complete carve's metadata hash differs from its bytes.

It prints the faults by kind, every violation and a last summary line, and exits 1 on any
violation. The same seed gives the same hosts and the same fault sequence (their timing
and what they hit in flight depend on the machine)::

    .venv/bin/python -m bench.chaos --seed 7 --minutes 3
    .venv/bin/python -m bench.chaos --seed 1 --minutes 0.3 --hosts 10   # the test suite's run
    .venv/bin/python -m bench.chaos --seed 7 --minutes 3 --ha   # three RabbitMQ nodes, Sentinel

The drill shortens a few timeouts (idle 20 s, janitor every 2 s, assembler drain 5 s)
so it settles in seconds, not hours; nothing else differs from the defaults. It also
reports how long each SUCCESS carve took to become complete after its host's last reply
(the janitor, sweeping carves quiet for 20 s, would only finish one that lags that much).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import AsyncMongoClient

from bench.chaos_faults import FaultLog, Targets, inject
from bench.chaos_services import (
    DurableRedis,
    DurableSecantus,
    Service,
    add_vhost,
    round_robin_front,
)
from bench.cli import work_root
from clients.osquery_sim import (
    STATUS_SUCCESS,
    CarveResult,
    build_synthetic_archive,
    carve,
)
from devstack.backends import running_backends
from devstack.ha import HaBackends, running_ha
from devstack.servers import RabbitServer, Server
from devstack.vault import POLICY, VaultAdmin
from shared.protocol import max_block_body

KiB, MiB = 1024, 1024 * 1024
# Block size: most blocks a host sends at it (so an 8 KiB host sends hundreds of requests
# and a 1 MiB host a dozen megabytes).
BLOCKS = {8 * KiB: 200, 32 * KiB: 100, 64 * KiB: 60, 256 * KiB: 30, MiB: 12}
SHORT = {
    "CARVE_SESSION_IDLE_TIMEOUT": "20",
    "CARVE_JANITOR_INTERVAL": "2",
    "CARVE_JANITOR_LEASE": "30",
    "CARVE_DRAIN_TIMEOUT": "5",
}


@dataclass(frozen=True)
class Host:
    index: int
    carve_id: str
    start_at: float  # seconds after the run starts
    block_size: int
    size: int
    compress: bool
    version: tuple[int, int, int]


def plan_hosts(rng: random.Random, count: int, seconds: float) -> list[Host]:
    """``count`` hosts in 4-7 overlapping waves over the first 70 % of the run."""
    waves = sorted(rng.uniform(0, 0.7 * seconds) for _ in range(rng.randint(4, 7)))
    hosts = []
    for i in range(count):
        block_size = rng.choice(sorted(BLOCKS))
        size = rng.randint(1, BLOCKS[block_size]) * block_size - rng.randrange(block_size)
        hosts.append(
            Host(
                index=i,
                carve_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                start_at=rng.choice(waves) + rng.uniform(0, 3),
                block_size=block_size,
                size=max(size, 1),
                compress=rng.random() < 0.3,
                version=rng.choice([(5, 22, 0), (5, 23, 0)]),
            )
        )
    return hosts


@dataclass
class Seen:
    """What the server holds for one carve."""

    doc: dict[str, Any] | None
    gridfs_sha256: str | None = None
    download_sha256: str | None = None


def verdict(result: CarveResult, seen: Seen) -> list[str]:
    """Every way the server's outcome contradicts what the host recorded (empty: none)."""
    doc, host_ok, problems = seen.doc, result.status == STATUS_SUCCESS, []
    if doc is None:
        return [] if not host_ok else ["host SUCCESS, but the server has no such carve"]
    status = doc.get("status")
    if status == "receiving":
        problems.append("still receiving")
    if status == "complete":
        if doc.get("sha256") != seen.gridfs_sha256:
            problems.append(f"metadata sha256 {doc.get('sha256')} != bytes {seen.gridfs_sha256}")
        if doc.get("sha256") != result.sha256:
            problems.append(f"complete with sha256 {doc.get('sha256')}, host has {result.sha256}")
        if host_ok and seen.download_sha256 != result.sha256:
            problems.append(f"download serves sha256 {seen.download_sha256}")
    elif host_ok:
        problems.append(f"host SUCCESS, server says {status}")
    elif status != "failed" or not doc.get("failure_reason"):
        problems.append(f"host {result.status}, server says {status} without a reason")
    return problems


async def _sha256_of(chunks: Any) -> str:
    digest = hashlib.sha256()
    async for piece in chunks:
        digest.update(piece)
    return digest.hexdigest()


async def observe(
    db: Any, http: aiohttp.ClientSession, download: str, token: str, carve_id: str
) -> Seen:
    doc = await db["carves"].find_one({"_id": carve_id})
    seen = Seen(doc)
    if doc is None or doc["status"] != "complete":
        return seen
    try:
        stream = await AsyncGridFSBucket(db, bucket_name="archives").open_download_stream(carve_id)
    except NoFile:
        return seen

    async def gridfs_pieces() -> Any:
        while piece := await stream.readchunk():
            yield piece

    seen.gridfs_sha256 = await _sha256_of(gridfs_pieces())
    url = f"{download}/api/v1/carves/{carve_id}/archive"
    async with http.get(url, headers={"X-Vault-Token": token}) as resp:
        if resp.status == 200:
            seen.download_sha256 = await _sha256_of(resp.content.iter_chunked(MiB))
    return seen


async def run_host(
    http: aiohttp.ClientSession, front: str, host: Host, workdir: Path, started: float
) -> tuple[CarveResult, datetime]:
    """The host's carve, and when it ended (its last reply)."""
    archive = await asyncio.to_thread(
        build_synthetic_archive,
        host.size,
        workdir / str(host.index),
        carve_guid=host.carve_id,
        compress=host.compress,
        seed=host.index,
    )
    await asyncio.sleep(max(0.0, started + host.start_at - time.monotonic()))
    result = await carve(
        http,
        front,
        archive,
        block_size=host.block_size,
        carve_id=host.carve_id,
        version=host.version,
        node_key=f"node-key-{host.index}",
    )
    return result, datetime.now(UTC)


async def settle(db: Any, ids: list[str], timeout: float) -> None:
    """Until none of the run's carves is receiving (the janitor fails idle ones), or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await db["carves"].count_documents({"_id": {"$in": ids}, "status": "receiving"}):
            return
        await asyncio.sleep(1.0)


@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    hosts: list[Host]
    targets: Targets
    download: Service
    env: dict[str, str]
    token: str
    lags: list[float] = field(default_factory=list)  # completed_at - the host's last reply


async def chaos(args: argparse.Namespace, root: Path) -> int:
    rng = random.Random(f"{args.seed}:hosts")
    hosts = plan_hosts(rng, args.hosts or rng.randint(30, 50), args.minutes * 60)
    with contextlib.ExitStack() as stack:
        ha: HaBackends | None = None
        redis: Server | None
        rabbit: RabbitServer
        if args.ha:  # three RabbitMQ nodes, Redis with Sentinel: the drills' faults
            ha = stack.enter_context(running_ha(root / "ha", redis_cluster=False))
            env = ha.env("sentinel")
            redis, rabbit, mongo, vault = None, ha.rabbit.nodes[0], ha.mongo, ha.vault
        else:
            redis = DurableRedis(root / "redis")
            mongo = DurableSecantus(root / "mongo")
            backends = stack.enter_context(running_backends(root, redis=redis, mongo=mongo))
            env = {**backends.env(), "CARVE_AMQP_URL": add_vhost(backends.rabbit)}
            rabbit, vault = backends.rabbit, backends.vault
        env = {**env, "CARVE_MONGO_DB": "chaos", "CARVE_LOG_LEVEL": "WARNING", **SHORT}
        logdir = root / "logs"
        logdir.mkdir(exist_ok=True)
        ingests = [Service("ingest", f"ingest-{i}", env, logdir) for i in (1, 2)]
        assemblers = [Service("assembler", f"assembler-{i}", env, logdir) for i in (1, 2)]
        janitor = Service("janitor", "janitor", env, logdir)
        download = Service("download", "download", env, logdir)
        services = [*ingests, *assemblers, janitor, download]
        for service in services:
            service.start()
        try:
            await asyncio.gather(*(s.wait_ready() for s in services))
            targets = Targets(ingests, assemblers, redis, rabbit, mongo, ha=ha)
            token = VaultAdmin.provisioned(vault).token(POLICY).token
            return await drive(Run(args, root, hosts, targets, download, env, token))
        finally:
            await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)


async def drive(run: Run) -> int:
    """Hosts and faults at once; then settle, check every carve and report."""
    faults = FaultLog()
    started = time.monotonic()
    limit = max_block_body(MiB) + 4096
    async with (
        round_robin_front([s.url for s in run.targets.ingests], limit) as front,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        rng = random.Random(f"{run.args.seed}:faults")
        until = started + run.args.minutes * 60
        injector = asyncio.create_task(inject(run.targets, rng, until, faults, started))
        workdir = run.root / "archives"
        tasks = [asyncio.create_task(run_host(http, front, h, workdir, started)) for h in run.hosts]
        await injector
        # Every host ends on its own (16 s per request, three attempts): this is a backstop.
        await asyncio.wait(tasks, timeout=240)
        results: dict[str, tuple[CarveResult, datetime]] = {}
        violations: list[str] = []
        for host, task in zip(run.hosts, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is None:
                results[host.carve_id] = task.result()
            else:
                task.cancel()
                violations.append(f"host {host.index} ({host.carve_id}): did not finish")
        outcomes = await check(run, http, results, violations)
    report(run, faults, outcomes, violations, time.monotonic() - started)
    return 1 if violations else 0


async def check(
    run: Run,
    http: aiohttp.ClientSession,
    results: dict[str, tuple[CarveResult, datetime]],
    violations: list[str],
) -> collections.Counter[str]:
    """Compare every host's record with the server's; add what contradicts to ``violations``."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        run.env["CARVE_MONGO_URL"], tz_aware=True
    )
    outcomes: collections.Counter[str] = collections.Counter()
    try:
        db = mongo[run.env["CARVE_MONGO_DB"]]
        await settle(db, [h.carve_id for h in run.hosts], timeout=90)
        for host in run.hosts:
            if host.carve_id not in results:
                continue
            result, ended = results[host.carve_id]
            seen = await observe(db, http, run.download.url, run.token, host.carve_id)
            if seen.doc and seen.doc.get("completed_at") and result.status == STATUS_SUCCESS:
                run.lags.append((seen.doc["completed_at"] - ended).total_seconds())
            server = seen.doc["status"] if seen.doc else "none"
            outcomes[f"host {result.status} / server {server}"] += 1
            violations += [
                f"host {host.index} ({host.carve_id}): {p}" for p in verdict(result, seen)
            ]
        stray = await db["carves"].count_documents({"status": "receiving"})
        if stray:
            violations.append(f"{stray} carves still receiving")
    finally:
        await mongo.close()
    return outcomes


def report(
    run: Run,
    faults: FaultLog,
    outcomes: collections.Counter[str],
    violations: list[str],
    seconds: float,
) -> None:
    args, hosts = run.args, len(run.hosts)
    print("faults by kind:")
    for kind, n in sorted(faults.counts.items()):
        print(f"  {kind:<18} {n}")
    for error in faults.errors:
        print(f"  fault not injected: {error}")
    print("outcomes:")
    for outcome, n in sorted(outcomes.items()):
        print(f"  {outcome:<40} {n}")
    if run.lags:
        lags = sorted(run.lags)
        print(
            f"complete after the host's last reply: median {lags[len(lags) // 2]:.1f} s, "
            f"max {lags[-1]:.1f} s ({len(lags)} carves)"
        )
    print(f"violations: {len(violations)}")
    for violation in violations:
        print(f"  {violation}")
    success = sum(n for k, n in outcomes.items() if k.startswith(f"host {STATUS_SUCCESS} "))
    print(
        f"chaos seed={args.seed} minutes={args.minutes:g} hosts={hosts} host_success={success} "
        f"host_failed={sum(outcomes.values()) - success} faults={sum(faults.counts.values())} "
        f"violations={len(violations)} seconds={seconds:.0f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--minutes", type=float, default=3.0, help="faults for this long")
    parser.add_argument("--hosts", type=int, default=0, help="hosts (default: 30-50, seeded)")
    parser.add_argument("--workdir", type=Path, help="keep servers' data and logs here")
    parser.add_argument(
        "--ha", action="store_true", help="on the HA stack, with the failover drills' faults"
    )
    args = parser.parse_args(argv)
    with work_root(args.workdir, "carve-chaos-") as root:
        return uvloop.run(chaos(args, root))


if __name__ == "__main__":
    sys.exit(main())
