"""One upload scenario run: simulated hosts upload, the assemblers drain, every carve checked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from bench.cli import log
from bench.procstats import RssSampler, backend_cpu, cpu_seconds, process_usage
from bench.queue_depth import QueueDepthSampler
from bench.render import MB
from clients.osquery_sim import (
    STATUS_SUCCESS,
    CarveResult,
    build_synthetic_archive,
    carve_many,
)
from devstack.backends import Backends
from devstack.services import ServiceProcess
from shared.mongo import Document

POLL_INTERVAL = 0.2
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
