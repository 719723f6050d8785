"""Upload benchmark: how fast carves go from simulated osquery hosts into MongoDB GridFS.

Everything runs on this machine: private Redis, RabbitMQ and SecantusDB servers (the
``tests.servers`` classes, in a temporary directory), then for every scenario a fresh ingest
and a fresh assembler process (``python -m services.<name>``, own database and queue), with the
osquery simulator (``clients.osquery_sim.carve_many``) driving the ingest from this process.
SecantusDB is pure Python and the simulator, both services and all three backends share the
same cores, so the numbers are a picture of this whole box, not of one component.

Measured per scenario:

* upload: from calling the simulator to the last block reply (includes the simulator hashing
  each archive first, about 1.4 GB/s here); accepted MB/s and blocks/s over that time, and the
  block request latency p50/p99 seen by the hosts;
* drain: from the last block reply until every carve is ``complete`` in the ``carves``
  collection (polled every 0.2 s); total = upload + drain, end-to-end MB/s over the total;
* memory: peak RSS (VmHWM) of ingest and assembler, and the largest RSS sampled every 0.2 s;
  CPU seconds (utime + stime) spent by each service after it was ready, and the CPU that the
  backends and this process (the simulator) used during the scenario;
* errors: carves not ``SUCCESS``, failed blocks, error replies, carves not ``complete``, and
  SHA-256 mismatches between the ``carves`` document and what the simulator uploaded.

Before the scenarios, the same servers are measured raw ("ceilings"): GridFS-shaped chunk
inserts with PyMongo's async API (``insert_many`` of 64 x 8 KiB, ``insert_one`` of 1 MiB, one
request at a time), RabbitMQ publish-with-confirm of persistent 8 KiB and 1 MiB messages to a
durable quorum queue (64 concurrent publishers on one confirm channel), and Redis round trips
(a pipeline of HGETALL + GETBIT, as the ingest does per block, one at a time). Each scenario's
rates are also shown as a fraction of the MongoDB ceiling for its block size (and the accepted
rate against the RabbitMQ one).

Run from the repository root::

    .venv/bin/python -m bench.upload                 # full run, several minutes
    .venv/bin/python -m bench.upload --quick         # smoke check, well under a minute
    .venv/bin/python -m bench.upload --json-out /tmp/upload.json

The table goes to stdout, progress to stderr, everything as JSON to ``--json-out`` (default
``docs/benchmarks/upload-latest.json``). The exit status is 0 only if every carve ended
``SUCCESS`` and became ``complete`` with the uploaded SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel
from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from clients.osquery_sim import (
    STATUS_SUCCESS,
    CarveResult,
    build_synthetic_archive,
    carve_many,
    percentile,
)
from tests.servers import RabbitServer, RedisServer, SecantusServer, Server, start_all
from tests.stack import ROOT, ServiceProcess

Document = dict[str, Any]

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000
GB = 1000 * MB

SAMPLE_INTERVAL = 0.2
POLL_INTERVAL = 0.2
SERVICES = ("ingest", "assembler")
DEFAULT_JSON = ROOT / "docs" / "benchmarks" / "upload-latest.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DONE_STATUSES = ["complete", "failed", "expired"]


@dataclass(frozen=True)
class Scenario:
    name: str
    hosts: int
    carve_size: int
    block_size: int
    purpose: str
    # Staged: the assembler is paused (SIGSTOP) during the upload, so "accepted" is the
    # ingest's own rate without MongoDB competing for the cores, and "drain" is the
    # assembler's own rate with nothing else running.
    staged: bool = False


FULL = (
    Scenario("A", 10, 100 * MB, MiB, "throughput, 1 MiB blocks"),
    Scenario("B", 10, 5 * MB, 8 * KiB, "throughput, osquery's default 8 KiB blocks"),
    Scenario("C", 50, 20 * MB, MiB, "peak RSS at 50 hosts"),
    Scenario("AS", 10, 100 * MB, MiB, "A staged: ingest alone, then assembler alone", True),
    Scenario("BS", 10, 5 * MB, 8 * KiB, "B staged: ingest alone, then assembler alone", True),
    Scenario("D1", 1, 10 * MB, MiB, "RSS vs carve size: small"),
    Scenario("D2", 1, 1 * GB, MiB, "RSS vs carve size: large"),
    Scenario("D3", 1, 100 * MB, MiB, "RSS vs carve size: middle (pipeline full, 10x smaller)"),
)
QUICK = (
    Scenario("A", 2, 10 * MB, MiB, "throughput, 1 MiB blocks"),
    Scenario("B", 2, 1 * MB, 8 * KiB, "throughput, 8 KiB blocks"),
    Scenario("D1", 1, 10 * MB, MiB, "RSS vs carve size: small"),
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def proc_kb(path: str, key: str) -> int:
    """A ``Key:  1234 kB`` value from a /proc file (status, meminfo); 0 if absent."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from field 3 (state) on; the comm may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _cpu_of(fields: list[str]) -> float:
    # utime and stime are fields 14 and 15 (1-based), so 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return _cpu_of(_stat_fields(pid))


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of the live processes in process group ``pgid`` (a server and its children)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(int(entry.name))
            if int(fields[2]) == pgid:  # field 5: pgrp
                total += _cpu_of(fields)
    return total


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(proc_kb("/proc/meminfo", "MemTotal") / MiB, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "secantusdb": metadata.version("secantusdb"),
        "pymongo": metadata.version("pymongo"),
    }


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@dataclass
class Backends:
    redis: RedisServer
    rabbit: RabbitServer
    mongo: SecantusServer

    @property
    def servers(self) -> list[Server]:
        return [self.redis, self.rabbit, self.mongo]

    def cpu_seconds(self) -> dict[str, float]:
        return {s.name: group_cpu_seconds(s.proc.pid) for s in self.servers if s.proc is not None}


@contextlib.contextmanager
def running_backends(root: Path) -> Iterator[Backends]:
    """Start the three servers at once; always stop them (their data is thrown away)."""
    backends = Backends(
        redis=RedisServer(root / "redis"),
        rabbit=RabbitServer(root / "rabbitmq"),
        mongo=SecantusServer(root / "mongo"),
    )
    try:
        start_all(backends.servers)
        yield backends
    finally:
        for server in backends.servers:
            server.stop(signal.SIGKILL)
        backends.rabbit.remove()


# --------------------------------------------------------------------------------------------
# Ceilings
# --------------------------------------------------------------------------------------------

Step = Callable[[], Awaitable[int]]


async def _until(step: Step, deadline: float) -> int:
    count = 0
    while time.perf_counter() < deadline:
        count += await step()
    return count


async def timed(steps: Sequence[Step], duration: float) -> tuple[int, float]:
    """Run every step in a loop, concurrently, for ``duration`` s: (total count, seconds)."""
    started = time.perf_counter()
    counts = await asyncio.gather(*(_until(step, started + duration) for step in steps))
    return sum(counts), time.perf_counter() - started


def rate(unit: str, count: int, item_size: int, seconds: float) -> dict[str, Any]:
    return {
        "item_bytes": item_size,
        unit: count,
        "seconds": round(seconds, 3),
        f"{unit}_per_s": round(count / seconds, 1),
        "mb_per_s": round(count * item_size / MB / seconds, 2),
    }


async def _mongo_insert_many(
    chunks: AsyncCollection[Document], size: int, batch: int, duration: float
) -> dict[str, Any]:
    data, files_id, counter = Binary(os.urandom(size)), uuid.uuid4().hex, itertools.count()

    async def step() -> int:
        docs = [{"files_id": files_id, "n": next(counter), "data": data} for _ in range(batch)]
        await chunks.insert_many(docs)
        return batch

    count, seconds = await timed([step], duration)
    return rate("chunks", count, size, seconds)


async def _mongo_insert_one(
    chunks: AsyncCollection[Document], size: int, duration: float
) -> dict[str, Any]:
    data, files_id, counter = Binary(os.urandom(size)), uuid.uuid4().hex, itertools.count()

    async def step() -> int:
        await chunks.insert_one({"files_id": files_id, "n": next(counter), "data": data})
        return 1

    count, seconds = await timed([step], duration)
    return rate("chunks", count, size, seconds)


async def mongo_ceilings(url: str, duration: float) -> dict[str, dict[str, Any]]:
    """Chunk writes shaped like the assembler's: GridFS chunks with the unique (files_id, n)."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(url)
    db = client[f"bench_ceiling_{uuid.uuid4().hex[:8]}"]
    chunks = db["archives.chunks"]
    try:
        await chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        return {
            "mongo_insert_many_8k": await _mongo_insert_many(chunks, 8 * KiB, 64, duration),
            "mongo_insert_one_1m": await _mongo_insert_one(chunks, MiB, duration),
        }
    finally:
        await client.drop_database(db.name)
        await client.close()


async def _rabbit_publish(
    channel: AbstractChannel, size: int, publishers: int, duration: float
) -> dict[str, Any]:
    name = f"bench.ceiling.{size}.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    body = os.urandom(size)

    async def step() -> int:
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=name)
        return 1

    try:
        count, seconds = await timed([step] * publishers, duration)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    return rate("messages", count, size, seconds)


async def rabbit_ceilings(url: str, duration: float) -> dict[str, dict[str, Any]]:
    """Persistent publishes with confirms to a durable quorum queue, 64 in flight."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        return {
            "rabbit_publish_8k": await _rabbit_publish(channel, 8 * KiB, 64, duration),
            "rabbit_publish_1m": await _rabbit_publish(channel, MiB, 64, duration),
        }
    finally:
        await connection.close()


async def redis_ceiling(url: str, duration: float) -> dict[str, dict[str, Any]]:
    """Sequential round trips of the ingest's per-block pipeline: HGETALL + GETBIT."""
    redis = Redis.from_url(url)
    tag = uuid.uuid4().hex[:8]
    meta, bits = f"bench:{tag}:s", f"bench:{tag}:b"
    await redis.hset(
        meta,
        mapping={
            "carve_id": tag,
            "request_id": tag,
            "block_count": 1000,
            "block_size": 8192,
            "carve_size": 8192000,
            "node_key_sha256": "",
        },
    )
    await redis.setbit(bits, 999, 1)

    async def step() -> int:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(meta)
            pipe.getbit(bits, 7)
            await pipe.execute()
        return 1

    try:
        count, seconds = await timed([step], duration)
    finally:
        await redis.delete(meta, bits)
        await redis.aclose()
    return {"redis_pipeline": rate("round_trips", count, 0, seconds)}


async def measure_ceilings(backends: Backends, duration: float) -> dict[str, dict[str, Any]]:
    log(f"ceilings: about {duration:g} s each")
    ceilings = await mongo_ceilings(backends.mongo.url, duration)
    ceilings |= await rabbit_ceilings(backends.rabbit.url, duration)
    ceilings |= await redis_ceiling(backends.redis.url, duration * 2 / 3)
    return ceilings


# --------------------------------------------------------------------------------------------
# Scenario machinery
# --------------------------------------------------------------------------------------------


@dataclass
class Context:
    backends: Backends
    mongo: AsyncMongoClient[Document]
    workdir: Path
    ceilings: dict[str, dict[str, Any]]


@dataclass
class Run:
    """What one scenario produced, before it is turned into a report row."""

    results: list[CarveResult]
    upload_s: float
    drain_s: float
    settled: int
    usage: dict[str, dict[str, float]]
    backend_cpu: dict[str, float]
    bench_cpu: float
    rss_samples: int


class RssSampler:
    """Largest VmRSS of each process, sampled every SAMPLE_INTERVAL while inside the block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.max_kb = dict.fromkeys(pids, 0)
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.samples += 1
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                self.max_kb[name] = max(self.max_kb[name], proc_kb(f"/proc/{pid}/status", "VmRSS"))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()


def service_env(backends: Backends, tag: str) -> dict[str, str]:
    """The CARVE_* settings of one scenario's services (own database, queue and key prefix)."""
    return {
        "CARVE_REDIS_URL": backends.redis.url,
        "CARVE_AMQP_URL": backends.rabbit.url,
        "CARVE_MONGO_URL": backends.mongo.url,
        "CARVE_MONGO_DB": f"bench_{tag}",
        "CARVE_AMQP_QUEUE": f"bench.blocks.{tag}",
        "CARVE_REDIS_KEY_PREFIX": f"bench{tag}:",
        "CARVE_LOG_LEVEL": "WARNING",
        **EXTRA_ENV,
    }


# Extra environment for the services under test (--service-env), e.g. LD_PRELOAD.
EXTRA_ENV: dict[str, str] = {}


def stop_service(service: ServiceProcess) -> None:
    try:
        service.kill(signal.SIGTERM)
    except subprocess.TimeoutExpired:
        service.kill(signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_services(
    env: dict[str, str], logdir: Path
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Fresh ingest and assembler processes (CARVE_HTTP_PORT is picked by ServiceProcess)."""
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            procs[name] = ServiceProcess(name, env, logdir / f"{name}.log")
        for proc in procs.values():
            await proc.wait_ready(60.0)
        yield procs
    finally:
        for proc in procs.values():
            stop_service(proc)


def build_archives(scenario: Scenario, dest: Path, ids: Sequence[str]) -> list[Path]:
    return [
        build_synthetic_archive(scenario.carve_size, dest, carve_guid=carve_id, seed=i)
        for i, carve_id in enumerate(ids)
    ]


async def wait_settled(carves: AsyncCollection[Document], ids: list[str], timeout: float) -> int:
    """Poll until every carve is complete (or failed/expired) or ``timeout``; how many are."""
    query = {"_id": {"$in": ids}, "status": {"$in": DONE_STATUSES}}
    deadline = time.perf_counter() + timeout
    while True:
        settled = await carves.count_documents(query)
        if settled >= len(ids):
            return settled
        if time.perf_counter() > deadline:
            log(f"gave up after {timeout:.0f} s: {settled} of {len(ids)} carves settled")
            return settled
        await asyncio.sleep(POLL_INTERVAL)


def process_usage(pid: int, cpu_at_ready: float, sampled_kb: int) -> dict[str, float]:
    status = f"/proc/{pid}/status"
    cpu = cpu_seconds(pid)
    return {
        "peak_rss_mib": round(proc_kb(status, "VmHWM") / KiB, 1),
        "max_sampled_rss_mib": round(sampled_kb / KiB, 1),
        "rss_at_end_mib": round(proc_kb(status, "VmRSS") / KiB, 1),
        "cpu_s": round(cpu, 2),
        "cpu_s_after_ready": round(cpu - cpu_at_ready, 2),
    }


async def drive(
    scenario: Scenario,
    procs: dict[str, ServiceProcess],
    archives: list[Path],
    ids: list[str],
    carves: AsyncCollection[Document],
    backends: Backends,
) -> Run:
    """Upload, wait for assembly, then read the processes' counters while they still live."""
    pids = {name: proc.proc.pid for name, proc in procs.items()}
    cpu_ready = {name: cpu_seconds(pid) for name, pid in pids.items()}
    backend_cpu, bench_cpu = backends.cpu_seconds(), time.process_time()
    timeout = 120 + scenario.hosts * scenario.carve_size / MB / 2  # at least ~2 MB/s
    async with RssSampler(pids) as sampler:
        if scenario.staged:
            os.kill(pids["assembler"], signal.SIGSTOP)
        started = time.perf_counter()
        try:
            results = await carve_many(
                procs["ingest"].url, archives, carve_ids=ids, block_size=scenario.block_size
            )
        finally:
            if scenario.staged:
                os.kill(pids["assembler"], signal.SIGCONT)
        uploaded = time.perf_counter()
        settled = await wait_settled(carves, [r.carve_id for r in results if r.ok], timeout)
        done = time.perf_counter()
    backend_after = backends.cpu_seconds()
    return Run(
        results=results,
        upload_s=uploaded - started,
        drain_s=done - uploaded,
        settled=settled,
        usage={n: process_usage(pid, cpu_ready[n], sampler.max_kb[n]) for n, pid in pids.items()},
        backend_cpu={
            k: round(backend_after[k] - backend_cpu.get(k, 0.0), 2) for k in backend_after
        },
        bench_cpu=round(time.process_time() - bench_cpu, 2),
        rss_samples=sampler.samples,
    )


async def check_carves(
    carves: AsyncCollection[Document], results: list[CarveResult]
) -> dict[str, int]:
    """Everything that went wrong, by kind (all zero for a clean run)."""
    cursor = carves.find(
        {"_id": {"$in": [r.carve_id for r in results]}}, {"status": 1, "sha256": 1}
    )
    docs = {doc["_id"]: doc for doc in await cursor.to_list()}
    complete = {k: d for k, d in docs.items() if d.get("status") == "complete"}
    return {
        "not_success": sum(r.status != STATUS_SUCCESS for r in results),
        "failed_blocks": sum(len(r.failed_blocks) for r in results),
        "error_replies": sum(len(r.error_replies) for r in results),
        "not_complete": sum(r.carve_id not in complete for r in results),
        "sha_mismatch": sum(
            r.carve_id in complete and complete[r.carve_id].get("sha256") != r.sha256
            for r in results
        ),
    }


def log_summary(path: Path) -> dict[str, Any]:
    """Services log at WARNING here, so any line at all is worth a look."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {"lines": len(lines), "tail": lines[-5:]}


# --------------------------------------------------------------------------------------------
# Scenario report rows
# --------------------------------------------------------------------------------------------


def ceiling_keys(block_size: int) -> tuple[str, str]:
    """The MongoDB and RabbitMQ ceilings that match a block size."""
    if block_size < MiB:
        return "mongo_insert_many_8k", "rabbit_publish_8k"
    return "mongo_insert_one_1m", "rabbit_publish_1m"


def _ratio(value: float, ceiling: dict[str, Any]) -> float:
    return round(value / ceiling["mb_per_s"], 3) if ceiling["mb_per_s"] else 0.0


def throughput(scenario: Scenario, run: Run, ceilings: dict[str, Any]) -> dict[str, Any]:
    total_bytes = sum(r.size for r in run.results)
    blocks = sum(r.block_count for r in run.results)
    latencies = [value for r in run.results for value in r.latencies]
    total_s = run.upload_s + run.drain_s
    accepted, e2e = total_bytes / MB / run.upload_s, total_bytes / MB / total_s
    mongo_key, rabbit_key = ceiling_keys(scenario.block_size)
    return {
        "total_mb": round(total_bytes / MB, 1),
        "blocks": blocks,
        "upload_s": round(run.upload_s, 2),
        "accepted_mb_per_s": round(accepted, 2),
        "accepted_blocks_per_s": round(blocks / run.upload_s, 1),
        "max_host_upload_s": round(max(r.elapsed for r in run.results), 2),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "drain_s": round(run.drain_s, 2),
        "total_s": round(total_s, 2),
        "e2e_mb_per_s": round(e2e, 2),
        "mongo_ceiling": mongo_key,
        "accepted_vs_mongo_ceiling": _ratio(accepted, ceilings[mongo_key]),
        "e2e_vs_mongo_ceiling": _ratio(e2e, ceilings[mongo_key]),
        "rabbit_ceiling": rabbit_key,
        "accepted_vs_rabbit_ceiling": _ratio(accepted, ceilings[rabbit_key]),
    }


def scenario_row(
    scenario: Scenario, run: Run, errors: dict[str, int], logs: dict[str, Any], ceilings: Any
) -> dict[str, Any]:
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "hosts": scenario.hosts,
        "carve_size": scenario.carve_size,
        "block_size": scenario.block_size,
        **throughput(scenario, run, ceilings),
        "ingest": run.usage["ingest"],
        "assembler": run.usage["assembler"],
        "backend_cpu_s": run.backend_cpu,
        "bench_process_cpu_s": run.bench_cpu,
        "rss_samples": run.rss_samples,
        "settled_carves": run.settled,
        "errors": errors,
        "error_count": sum(errors.values()),
        "service_logs": logs,
        "hosts_detail": [r.summary_dict() for r in run.results],
    }


async def _scenario_with_services(
    scenario: Scenario, ctx: Context, tag: str, archives: list[Path], ids: list[str]
) -> dict[str, Any]:
    env = service_env(ctx.backends, tag)
    db = ctx.mongo[env["CARVE_MONGO_DB"]]
    logdir = ctx.workdir / tag
    try:
        async with running_services(env, logdir) as procs:
            log(f"{scenario.name}: services ready, uploading")
            run = await drive(scenario, procs, archives, ids, db["carves"], ctx.backends)
        errors = await check_carves(db["carves"], run.results)
    finally:
        await ctx.mongo.drop_database(db.name)
    logs = {name: log_summary(logdir / f"{name}.log") for name in SERVICES}
    return scenario_row(scenario, run, errors, logs, ctx.ceilings)


async def run_scenario(scenario: Scenario, ctx: Context) -> dict[str, Any]:
    tag = f"{scenario.name.lower()}_{uuid.uuid4().hex[:8]}"
    archive_dir = ctx.workdir / tag / "archives"
    ids = [str(uuid.uuid4()) for _ in range(scenario.hosts)]
    log(f"{scenario.name}: building {scenario.hosts} x {human(scenario.carve_size)} archives")
    try:
        archives = await asyncio.to_thread(build_archives, scenario, archive_dir, ids)
        row = await _scenario_with_services(scenario, ctx, tag, archives, ids)
    finally:
        shutil.rmtree(archive_dir, ignore_errors=True)
    log(
        f"{scenario.name}: {row['total_mb']} MB in {row['total_s']} s "
        f"(upload {row['upload_s']} s, drain {row['drain_s']} s), errors {row['error_count']}"
    )
    for name, summary in row["service_logs"].items():
        if summary["lines"]:
            log(f"{scenario.name}: {name} logged {summary['lines']} lines, last: {summary['tail']}")
    return row


def rss_growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS of D2 over D1, per service (empty unless both ran)."""
    by_name = {row["name"]: row for row in rows}
    if "D1" not in by_name or "D2" not in by_name:
        return {}
    small, large = by_name["D1"], by_name["D2"]
    return {
        name: {
            "peak_rss_ratio": round(large[name]["peak_rss_mib"] / small[name]["peak_rss_mib"], 2),
            "max_sampled_rss_ratio": round(
                large[name]["max_sampled_rss_mib"] / small[name]["max_sampled_rss_mib"], 2
            ),
            "carve_size_ratio": round(large["carve_size"] / small["carve_size"], 1),
        }
        for name in SERVICES
    }


async def run_all(
    backends: Backends, workdir: Path, quick: bool, only: set[str] | None = None
) -> dict[str, Any]:
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(backends.mongo.url)
    try:
        ceilings = await measure_ceilings(backends, 0.5 if quick else 3.0)
        ctx = Context(backends, mongo, workdir, ceilings)
        chosen = [s for s in (QUICK if quick else FULL) if only is None or s.name in only]
        rows = [await run_scenario(s, ctx) for s in chosen]
    finally:
        await mongo.close()
    return {
        "mode": "quick" if quick else "full",
        "ceilings": ceilings,
        "scenarios": rows,
        "rss_growth_d2_over_d1": rss_growth(rows),
        "ok": all(row["error_count"] == 0 for row in rows),
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def human(size: int) -> str:
    """8192 -> 8KiB, 1048576 -> 1MiB, 100_000_000 -> 100MB, 10**9 -> 1GB."""
    for unit, name in ((MiB, "MiB"), (KiB, "KiB"), (GB, "GB"), (MB, "MB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    return "\n".join(lines)


THROUGHPUT_COLUMNS = (
    ("scen", "name"), ("hosts", "hosts"), ("carve", "carve_size"), ("block", "block_size"),
    ("tot MB", "total_mb"), ("up s", "upload_s"), ("acc MB/s", "accepted_mb_per_s"),
    ("blk/s", "accepted_blocks_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
    ("drain s", "drain_s"), ("total s", "total_s"), ("e2e MB/s", "e2e_mb_per_s"),
    ("acc/mongo", "accepted_vs_mongo_ceiling"), ("e2e/mongo", "e2e_vs_mongo_ceiling"),
    ("acc/mq", "accepted_vs_rabbit_ceiling"), ("errors", "error_count"),
)  # fmt: skip
RESOURCE_COLUMNS = (
    ("scen", "name"), ("ingest HWM MiB", "ingest.peak_rss_mib"),
    ("max RSS", "ingest.max_sampled_rss_mib"), ("cpu s", "ingest.cpu_s_after_ready"),
    ("assembler HWM MiB", "assembler.peak_rss_mib"),
    ("max RSS", "assembler.max_sampled_rss_mib"), ("cpu s", "assembler.cpu_s_after_ready"),
    ("secantus cpu s", "backend_cpu_s.secantus"), ("rabbitmq cpu s", "backend_cpu_s.rabbitmq"),
    ("redis cpu s", "backend_cpu_s.redis"), ("bench/sim cpu s", "bench_process_cpu_s"),
)  # fmt: skip
SIZE_KEYS = ("carve_size", "block_size")


def cell(row: dict[str, Any], key: str) -> object:
    """The value at a dotted key of a report row, sizes made readable; "-" if missing."""
    value: Any = row
    for part in key.split("."):
        value = value.get(part, "-") if isinstance(value, dict) else "-"
    return human(value) if key in SIZE_KEYS else value


def columns_table(columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    headers = [header for header, _ in columns]
    return table(headers, [[cell(row, key) for _, key in columns] for row in rows])


def ceiling_lines(ceilings: dict[str, dict[str, Any]]) -> list[str]:
    labels = {
        "mongo_insert_many_8k": ("MongoDB insert_many 64 x 8KiB chunks", "chunks"),
        "mongo_insert_one_1m": ("MongoDB insert_one 1MiB chunk", "chunks"),
        "rabbit_publish_8k": ("RabbitMQ confirmed publish 8KiB, 64 in flight", "messages"),
        "rabbit_publish_1m": ("RabbitMQ confirmed publish 1MiB, 64 in flight", "messages"),
        "redis_pipeline": ("Redis pipeline HGETALL+GETBIT, sequential", "round_trips"),
    }
    lines = []
    for key, (label, unit) in labels.items():
        c = ceilings[key]
        mb = f"  {c['mb_per_s']:>8} MB/s" if c["item_bytes"] else ""
        lines.append(f"  {label:<48} {c[f'{unit}_per_s']:>9} {unit}/s{mb}")
    return lines


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    parts = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']},"
        f" SecantusDB {m['secantusdb']}, PyMongo {m['pymongo']}",
        f"mode: {report['mode']}, total {report['total_seconds']} s"
        f" (backends up in {report['backend_start_s']} s)",
        "",
        "ceilings (same servers, measured before the scenarios):",
        *ceiling_lines(report["ceilings"]),
        "",
        "throughput (MB = 10^6 bytes; acc/mongo, e2e/mongo, acc/mq: fraction of the ceiling):",
        columns_table(THROUGHPUT_COLUMNS, report["scenarios"]),
        "",
        "resources (HWM = VmHWM peak RSS, max RSS = largest 0.2 s sample, cpu after ready):",
        columns_table(RESOURCE_COLUMNS, report["scenarios"]),
    ]
    for name, growth in report["rss_growth_d2_over_d1"].items():
        parts.append(
            f"D2/D1 peak RSS {name}: x{growth['peak_rss_ratio']} "
            f"(sampled x{growth['max_sampled_rss_ratio']}) for x{growth['carve_size_ratio']} size"
        )
    parts.append("result: " + ("OK" if report["ok"] else "ERRORS (see errors column / JSON)"))
    return "\n".join(parts)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the services under test (repeatable)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated scenario names to run (e.g. A,C)"
    )
    parser.add_argument(
        "--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}"
    )
    return parser.parse_args(argv)


def run(quick: bool, only: set[str] | None = None) -> dict[str, Any]:
    """Backends up, ceilings and scenarios, backends down (also on errors and Ctrl-C)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="carve-bench-"))
    try:
        log(f"starting Redis, RabbitMQ and SecantusDB under {workdir}")
        with running_backends(workdir / "backends") as backends:
            backend_start_s = round(time.perf_counter() - started, 1)
            report = asyncio.run(run_all(backends, workdir, quick, only))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "started_at": started_at,
        "machine": machine_info(),
        **report,
        "backend_start_s": backend_start_s,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    EXTRA_ENV.update(item.split("=", 1) for item in args.service_env)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        only = {name.strip() for name in args.only.split(",") if name.strip()} or None
        report = run(bool(args.quick), only)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    print(render(report))
    write_json(report, Path(args.json_out))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
