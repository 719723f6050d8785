"""Upload benchmark: how fast carves go from simulated osquery hosts into MongoDB GridFS.

Everything runs on this machine: private Redis, RabbitMQ and SecantusDB servers (the
``devstack`` servers, in a temporary directory), then for every scenario a fresh ingest
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
import math
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
import uvloop
from aio_pika.abc import AbstractChannel
from bson.binary import Binary
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from bench.queue_depth import QueueDepthSampler
from clients.osquery_sim import (
    STATUS_SUCCESS,
    CarveResult,
    build_synthetic_archive,
    carve_many,
    percentile,
)
from devstack import ROOT
from devstack.backends import Backends
from devstack.backends import running_backends as running_roles
from devstack.services import ServiceProcess

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
    # Staged: the assemblers are paused (SIGSTOP) during the upload, so "accepted" is the
    # ingest's own rate without MongoDB competing for the cores, and "drain" is the
    # assemblers' own rate with nothing else running.
    staged: bool = False
    compress: bool = False  # zstd level 1 .tar.zst, as the simulator's --compress
    ingests: int = 1  # hosts are spread over the ingest processes, host i to ingest i % n
    assemblers: int = 1

    @property
    def replicas(self) -> dict[str, int]:
        return {"ingest": self.ingests, "assembler": self.assemblers}


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


UPLOAD_ROLES = ("redis", "rabbit", "mongo")


def backend_cpu(backends: Backends) -> dict[str, float]:
    """CPU seconds of each backend server (with its child processes), by server name."""
    return {s.name: group_cpu_seconds(s.proc.pid) for s in backends.servers if s.proc is not None}


@contextlib.contextmanager
def running_backends(root: Path) -> Iterator[Backends]:
    """Start the three servers at once; always stop them (their data is thrown away)."""
    with running_roles(root, UPLOAD_ROLES) as backends:
        yield backends


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


def rate(unit: str, count: int, item_size: int, seconds: float, what: str) -> dict[str, Any]:
    return {
        "what": what,
        "unit": unit,
        "item_bytes": item_size,
        unit: count,
        "seconds": round(seconds, 3),
        f"{unit}_per_s": round(count / seconds, 1),
        "mb_per_s": round(count * item_size / MB / seconds, 2),
    }


# The block sizes whose ceilings bench.upload measures (8 KiB and 1 MiB blocks).
CEILING_SIZES = (8 * KiB, MiB)


def size_tag(size: int) -> str:
    """8192 -> "8k", 1048576 -> "1m": the suffix of a ceiling's key."""
    return f"{size // MiB}m" if size % MiB == 0 else f"{size // KiB}k"


def insert_batch(size: int) -> int:
    """Chunks per insert: insert_many of 64 chunks for small ones (4 MiB at most, as the
    assembler batches its writes), one insert_one per chunk from 1 MiB on."""
    return 1 if size >= MiB else max(1, min(64, 4 * MiB // size))


async def _mongo_inserts(
    chunks: AsyncCollection[Document], size: int, duration: float
) -> tuple[str, dict[str, Any]]:
    data, files_id, counter = Binary(os.urandom(size)), uuid.uuid4().hex, itertools.count()
    batch = insert_batch(size)

    async def step() -> int:
        docs = [{"files_id": files_id, "n": next(counter), "data": data} for _ in range(batch)]
        if batch == 1:
            await chunks.insert_one(docs[0])
        else:
            await chunks.insert_many(docs)
        return batch

    count, seconds = await timed([step], duration)
    kind = "insert_one" if batch == 1 else "insert_many"
    what = f"MongoDB {kind} {batch} x {human(size)} chunks"
    return f"mongo_{kind}_{size_tag(size)}", rate("chunks", count, size, seconds, what)


async def mongo_ceilings(
    url: str, duration: float, sizes: Sequence[int] = CEILING_SIZES
) -> dict[str, dict[str, Any]]:
    """Chunk writes shaped like the assembler's: GridFS chunks with the unique (files_id, n)."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(url)
    db = client[f"bench_ceiling_{uuid.uuid4().hex[:8]}"]
    chunks = db["archives.chunks"]
    try:
        await chunks.create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        return dict([await _mongo_inserts(chunks, size, duration) for size in sizes])
    finally:
        await client.drop_database(db.name)
        await client.close()


async def _rabbit_publish(
    channel: AbstractChannel, size: int, duration: float
) -> tuple[str, dict[str, Any]]:
    name = f"bench.ceiling.{size}.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    body = os.urandom(size)
    # 64 in flight, or fewer for large messages: 64 MiB in flight at most.
    publishers = max(1, min(64, 64 * MiB // size))

    async def step() -> int:
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=name)
        return 1

    try:
        count, seconds = await timed([step] * publishers, duration)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    what = f"RabbitMQ confirmed publish {human(size)}, {publishers} in flight"
    return f"rabbit_publish_{size_tag(size)}", rate("messages", count, size, seconds, what)


async def rabbit_ceilings(
    url: str, duration: float, sizes: Sequence[int] = CEILING_SIZES
) -> dict[str, dict[str, Any]]:
    """Persistent publishes with confirms to a durable quorum queue."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        return dict([await _rabbit_publish(channel, size, duration) for size in sizes])
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
    what = "Redis pipeline HGETALL+GETBIT, sequential"
    return {"redis_pipeline": rate("round_trips", count, 0, seconds, what)}


async def measure_ceilings(
    backends: Backends, duration: float, sizes: Sequence[int] = CEILING_SIZES
) -> dict[str, dict[str, Any]]:
    log(f"ceilings: about {duration:g} s each")
    ceilings = await mongo_ceilings(backends.mongo.url, duration, sizes)
    ceilings |= await rabbit_ceilings(backends.rabbit.url, duration, sizes)
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
    # CPU seconds of every process (services, backends, "bench") during the upload and the drain
    cpu_phases: dict[str, dict[str, float]]
    redis_commands: int
    rss_series: dict[str, list[list[float]]]
    queue_depth: dict[str, Any]
    upload_window: tuple[float, float]  # upload start and end, s since the samplers' origin


class RssSampler:
    """VmRSS of each process every SAMPLE_INTERVAL while inside the block: the largest, and
    the series of (seconds since ``origin``, MiB)."""

    def __init__(self, pids: dict[str, int], origin: float | None = None) -> None:
        self.pids = pids
        self.origin = time.perf_counter() if origin is None else origin
        self.max_kb = dict.fromkeys(pids, 0)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.samples += 1
        at = round(time.perf_counter() - self.origin, 3)
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                kb = proc_kb(f"/proc/{pid}/status", "VmRSS")
                self.max_kb[name] = max(self.max_kb[name], kb)
                self.series[name].append((at, round(kb / KiB, 1)))

    def series_mib(self) -> dict[str, list[list[float]]]:
        return {name: [list(point) for point in points] for name, points in self.series.items()}

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


def replica_labels(replicas: dict[str, int]) -> list[tuple[str, str]]:
    """(label, service) of each process: "ingest", "ingest-2", ..., "assembler", ..."""
    return [
        (name if i == 0 else f"{name}-{i + 1}", name)
        for name, count in replicas.items()
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def running_services(
    env: dict[str, str], logdir: Path, replicas: dict[str, int] | None = None
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Fresh ingest and assembler processes (CARVE_HTTP_PORT is picked by ServiceProcess)."""
    procs: dict[str, ServiceProcess] = {}
    try:
        for label, name in replica_labels(replicas or dict.fromkeys(SERVICES, 1)):
            procs[label] = ServiceProcess(name, env, logdir / f"{label}.log")
        for proc in procs.values():
            await proc.wait_ready(60.0)
        yield procs
    finally:
        for proc in procs.values():
            stop_service(proc)


def build_archives(scenario: Scenario, dest: Path, ids: Sequence[str]) -> list[Path]:
    return [
        build_synthetic_archive(
            scenario.carve_size, dest, carve_guid=carve_id, seed=i, compress=scenario.compress
        )
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


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of every process of a scenario at one moment, and Redis's command count."""

    cpu: dict[str, float]  # service labels, backends, and "bench" (this process)
    redis_commands: int

    def until(self, later: CpuSnapshot) -> dict[str, float]:
        return {k: round(v - self.cpu.get(k, 0.0), 2) for k, v in later.cpu.items()}


async def cpu_snapshot(pids: dict[str, int], backends: Backends, redis: Redis) -> CpuSnapshot:
    stats = await redis.info("stats")
    cpu = {label: cpu_seconds(pid) for label, pid in pids.items()} | backend_cpu(backends)
    cpu["bench"] = time.process_time()
    return CpuSnapshot(cpu, int(stats["total_commands_processed"]))


def with_label(procs: dict[str, ServiceProcess], service: str) -> list[ServiceProcess]:
    return [proc for label, proc in procs.items() if label.split("-")[0] == service]


async def upload_spread(
    urls: Sequence[str], archives: list[Path], ids: list[str], block_size: int
) -> list[CarveResult]:
    """Host i uploads through ``urls[i % len(urls)]``, as behind a load balancer."""
    groups = [range(k, len(archives), len(urls)) for k in range(min(len(urls), len(archives)))]
    per_url = await asyncio.gather(
        *(
            carve_many(
                url,
                [archives[i] for i in group],
                carve_ids=[ids[i] for i in group],
                block_size=block_size,
            )
            for url, group in zip(urls, groups, strict=False)
        )
    )
    by_id = {result.carve_id: result for results in per_url for result in results}
    return [by_id[carve_id] for carve_id in ids]


@contextlib.contextmanager
def paused(pids: Sequence[int], pause: bool) -> Iterator[None]:
    """SIGSTOP ``pids`` inside the block (if ``pause``), SIGCONT after it."""
    for pid in pids if pause else ():
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids if pause else ():
            os.kill(pid, signal.SIGCONT)


async def drive(
    scenario: Scenario,
    procs: dict[str, ServiceProcess],
    archives: list[Path],
    ids: list[str],
    carves: AsyncCollection[Document],
    backends: Backends,
    queue: str,
) -> Run:
    """Upload, wait for assembly, then read the processes' counters while they still live."""
    pids = {label: proc.proc.pid for label, proc in procs.items()}
    urls = [proc.url for proc in with_label(procs, "ingest")]
    assemblers = [proc.proc.pid for proc in with_label(procs, "assembler")]
    timeout = 120 + scenario.hosts * scenario.carve_size / MB / 2  # at least ~2 MB/s
    origin = time.perf_counter()
    async with (
        Redis.from_url(backends.redis.url) as redis,
        RssSampler(pids, origin) as sampler,
        QueueDepthSampler(backends.rabbit.url, queue, origin) as depth,
    ):
        ready = await cpu_snapshot(pids, backends, redis)
        with paused(assemblers, scenario.staged):
            started = time.perf_counter()
            results = await upload_spread(urls, archives, ids, scenario.block_size)
            uploaded = time.perf_counter()
            after_upload = await cpu_snapshot(pids, backends, redis)
        settled = await wait_settled(carves, [r.carve_id for r in results if r.ok], timeout)
        done_at = time.perf_counter()
        done = await cpu_snapshot(pids, backends, redis)
    total = ready.until(done)
    return Run(
        results=results,
        upload_s=uploaded - started,
        drain_s=done_at - uploaded,
        settled=settled,
        usage={n: process_usage(pid, ready.cpu[n], sampler.max_kb[n]) for n, pid in pids.items()},
        backend_cpu={s.name: total[s.name] for s in backends.servers if s.name in total},
        bench_cpu=total["bench"],
        rss_samples=sampler.samples,
        cpu_phases={"upload": ready.until(after_upload), "drain": after_upload.until(done)},
        # Each INFO is counted by the next one: one per interval is the bench's own.
        redis_commands=done.redis_commands - ready.redis_commands - 2,
        rss_series=sampler.series_mib(),
        queue_depth=depth.summary(),
        upload_window=(round(started - origin, 3), round(uploaded - origin, 3)),
    )


async def check_carves(
    carves: AsyncCollection[Document], results: list[CarveResult]
) -> tuple[dict[str, int], int]:
    """Everything that went wrong, by kind (all zero for a clean run), and how many carves are
    ``complete`` with the SHA-256 the host uploaded."""
    cursor = carves.find(
        {"_id": {"$in": [r.carve_id for r in results]}}, {"status": 1, "sha256": 1}
    )
    docs = {doc["_id"]: doc for doc in await cursor.to_list()}
    complete = {k: d for k, d in docs.items() if d.get("status") == "complete"}
    verified = sum(
        r.carve_id in complete and complete[r.carve_id].get("sha256") == r.sha256 for r in results
    )
    return {
        "not_success": sum(r.status != STATUS_SUCCESS for r in results),
        "failed_blocks": sum(len(r.failed_blocks) for r in results),
        "error_replies": sum(len(r.error_replies) for r in results),
        "not_complete": sum(r.carve_id not in complete for r in results),
        "sha_mismatch": sum(
            r.carve_id in complete and complete[r.carve_id].get("sha256") != r.sha256
            for r in results
        ),
    }, verified


def log_summary(path: Path) -> dict[str, Any]:
    """Services log at WARNING here, so any line at all is worth a look."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {"lines": len(lines), "tail": lines[-5:]}


# --------------------------------------------------------------------------------------------
# Scenario report rows
# --------------------------------------------------------------------------------------------


def nearest_ceiling(ceilings: dict[str, Any], prefix: str, block_size: int) -> str:
    """The ceiling of one kind (key ``prefix``) measured with the item size nearest the block's."""
    keys = [key for key in ceilings if key.startswith(prefix)]
    return min(keys, key=lambda key: abs(math.log(ceilings[key]["item_bytes"] / block_size)))


def ceiling_keys(block_size: int, ceilings: dict[str, Any]) -> tuple[str, str]:
    """The MongoDB and RabbitMQ ceilings that match a block size."""
    return (
        nearest_ceiling(ceilings, "mongo_", block_size),
        nearest_ceiling(ceilings, "rabbit_", block_size),
    )


def _ratio(value: float, ceiling: dict[str, Any], unit: str = "mb_per_s") -> float:
    return round(value / ceiling[unit], 3) if ceiling[unit] else 0.0


def drain_rates(
    scenario: Scenario, run: Run, ceilings: dict[str, Any], mongo_key: str
) -> dict[str, Any]:
    """Staged only: the assemblers' own rate (they did all their work after the upload)."""
    if not scenario.staged or run.drain_s <= 0:
        return {"drain_mb_per_s": None, "drain_blocks_per_s": None, "drain_vs_mongo_ceiling": None}
    drain = sum(r.size for r in run.results) / MB / run.drain_s
    return {
        "drain_mb_per_s": round(drain, 2),
        "drain_blocks_per_s": round(sum(r.block_count for r in run.results) / run.drain_s, 1),
        "drain_vs_mongo_ceiling": _ratio(drain, ceilings[mongo_key]),
    }


def redis_use(run: Run, ceilings: dict[str, Any]) -> dict[str, Any]:
    blocks = sum(r.block_count for r in run.results)
    ceiling = ceilings.get("redis_pipeline")
    return {
        "redis_commands": run.redis_commands,
        "redis_commands_per_block": round(run.redis_commands / blocks, 3) if blocks else None,
        # One sequential round trip per block would use this fraction of Redis's ceiling.
        "accepted_blocks_vs_redis_ceiling": (
            _ratio(blocks / run.upload_s, ceiling, "round_trips_per_s") if ceiling else None
        ),
    }


def throughput(scenario: Scenario, run: Run, ceilings: dict[str, Any]) -> dict[str, Any]:
    total_bytes = sum(r.size for r in run.results)
    blocks = sum(r.block_count for r in run.results)
    latencies = [value for r in run.results for value in r.latencies]
    total_s = run.upload_s + run.drain_s
    accepted, e2e = total_bytes / MB / run.upload_s, total_bytes / MB / total_s
    mongo_key, rabbit_key = ceiling_keys(scenario.block_size, ceilings)
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
        **drain_rates(scenario, run, ceilings, mongo_key),
        **redis_use(run, ceilings),
    }


def scenario_row(
    scenario: Scenario, run: Run, check: tuple[dict[str, int], int], logs: Any, ceilings: Any
) -> dict[str, Any]:
    errors, verified = check
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "hosts": scenario.hosts,
        "carve_size": scenario.carve_size,
        "block_size": scenario.block_size,
        "staged": scenario.staged,
        "compress": scenario.compress,
        "ingests": scenario.ingests,
        "assemblers": scenario.assemblers,
        **throughput(scenario, run, ceilings),
        "ingest": run.usage["ingest"],
        "assembler": run.usage["assembler"],
        "processes": run.usage,
        "backend_cpu_s": run.backend_cpu,
        "bench_process_cpu_s": run.bench_cpu,
        "cpu_s_by_phase": run.cpu_phases,
        "rss_samples": run.rss_samples,
        "upload_window_s": list(run.upload_window),
        "rss_series_mib": run.rss_series,
        "queue_depth": run.queue_depth,
        "settled_carves": run.settled,
        "verified_carves": verified,
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
        async with running_services(env, logdir, scenario.replicas) as procs:
            log(f"{scenario.name}: services ready, uploading")
            run = await drive(
                scenario, procs, archives, ids, db["carves"], ctx.backends, env["CARVE_AMQP_QUEUE"]
            )
        check = await check_carves(db["carves"], run.results)
    finally:
        await ctx.mongo.drop_database(db.name)
    labels = [label for label, _ in replica_labels(scenario.replicas)]
    logs = {label: log_summary(logdir / f"{label}.log") for label in labels}
    return scenario_row(scenario, run, check, logs, ctx.ceilings)


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
    lines = []
    for c in ceilings.values():
        unit = c["unit"]
        mb = f"  {c['mb_per_s']:>8} MB/s" if c["item_bytes"] else ""
        lines.append(f"  {c['what']:<48} {c[f'{unit}_per_s']:>9} {unit}/s{mb}")
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


def interruptible(work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run a benchmark; None if SIGTERM or Ctrl-C stopped it (its servers are stopped by then)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return work()
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return None


def names(text: str) -> set[str] | None:
    """``--only A, B`` as {"A", "B"}; None when empty (everything)."""
    return {name.strip() for name in text.split(",") if name.strip()} or None


def add_service_env_option(parser: argparse.ArgumentParser, services: str) -> None:
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"extra environment for {services} (repeatable)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    add_service_env_option(parser, "the services under test")
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
            report = uvloop.run(run_all(backends, workdir, quick, only))
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
    report = interruptible(lambda: run(bool(args.quick), names(args.only)))
    if report is None:
        return 130
    print(render(report))
    write_json(report, Path(args.json_out))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
