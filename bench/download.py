"""Download benchmark: how fast and how lean the download service streams a large carve.

Everything runs on this machine: a private SecantusDB (MongoDB wire protocol, pure Python) and
an OpenBao dev server (the ``tests.servers`` classes, in a temporary directory). One carve is
seeded straight into MongoDB the way the assembler leaves it (a pax tar with one member of
pseudo-random bytes, stored as 1 MiB GridFS chunks, the ``archives.files`` document and a
``complete`` carve document). Then, for every scenario, a fresh ``carve-download`` process
(``python -m services.download``) serves it to aiohttp clients in this process, each of which
streams its body, hashes it (SHA-256) and checks hash and length.

Scenarios, in this order: **A1** one download of the whole archive; **M20** 20 concurrent
downloads of the tar member (``/files/var/log/...``, which the service reads through
``tarfile`` in worker threads, ``CARVE_TAR_CONCURRENCY`` at a time: the others wait, and their
wait is part of their time); **A20** 20 concurrent downloads of the whole archive (last: see
the memory guard below).

Measured per scenario: wall time, aggregate MB/s (all bytes over the wall time), per-download
MB/s (min / median / max, from the request to the last byte) and time to the headers; the
download process's peak RSS (VmHWM, which is per scenario since the process is fresh) and its
largest RSS sampled every 0.2 s; CPU seconds of the download process, SecantusDB, OpenBao and
this process (the clients) during the scenario; SecantusDB's largest sampled RSS and the
lowest MemAvailable.

SecantusDB is not MongoDB in one way that matters here: it holds a cursor's whole result in
memory. The service queries one window of chunks at a time (CARVE_DOWNLOAD_BATCH_BYTES), so
this costs a window per download; when it still held one cursor per download, 20 concurrent
1 GiB downloads grew SecantusDB to 20 GiB. A memory guard kills SecantusDB (and fails the
scenario) if MemAvailable falls below ``--min-available-mib`` rather than let the kernel's OOM
killer choose a victim, and SecantusDB runs with jemalloc preloaded when it is installed
(``--secantus-malloc``). Neither touches the download service, which runs with the
environment it always has.

Before the scenarios, a raw read of the carve's chunks through PyMongo (one cursor, one chunk
per batch, as the service fetches them) gives the read ceiling of the same SecantusDB.

Run from the repository root::

    .venv/bin/python -m bench.download                 # 1 GiB carve, several minutes
    .venv/bin/python -m bench.download --quick         # 64 MiB carve, under half a minute
    .venv/bin/python -m bench.download --size 256MiB --only A1,M20 --json-out /tmp/d.json

The table goes to stdout, progress to stderr, everything as JSON to ``--json-out`` (default
``docs/benchmarks/download-latest.json``). The exit status is 0 only if every download
answered 200 with the expected length and SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from bson.binary import Binary
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from bench.upload import (
    MB,
    SAMPLE_INTERVAL,
    KiB,
    MiB,
    RssSampler,
    add_service_env_option,
    columns_table,
    cpu_seconds,
    group_cpu_seconds,
    human,
    interruptible,
    log,
    log_summary,
    machine_info,
    names,
    proc_kb,
    process_usage,
    stop_service,
    write_json,
)
from clients.osquery_sim import build_synthetic_archive, carve_member_name, parse_size
from shared.carves import CarveDoc, Compression, Status, archive_filename, carves_of, new_carve_doc
from shared.finalize import files_doc
from shared.mongo import ensure_indexes
from shared.protocol import StartRequest
from tests.servers import BaoServer, SecantusServer, Server, running
from tests.stack import ROOT, ServiceProcess
from tests.vault import POLICY, VaultAdmin

Document = dict[str, Any]

GiB = 1024 * MiB
DEFAULT_SIZE = 1 * GiB
QUICK_SIZE = 64 * MiB
BLOCK_SIZE = 1 * MiB
INSERT_BATCH = 16  # chunks per insert_many
CEILING_CHUNKS = 256  # chunks read raw for the read ceiling (256 MiB at most)
MEMBER_PATH = "/var/log/evidence.bin"
BUCKET = "archives"
RSS_TARGET_MB = 150  # download service peak RSS target, MB = 10^6 bytes
DEFAULT_JSON = ROOT / "docs" / "benchmarks" / "download-latest.json"
READ_PIECE = 1 * MiB
# A download that receives nothing for this long fails (a queued member download waits for a
# tar thread without receiving anything, so this is generous).
SOCK_READ_TIMEOUT = 600.0
DEFAULT_MIN_AVAILABLE_MIB = 3072
DEFAULT_SECANTUS_MALLOC = "jemalloc"
SECANTUS_MALLOC: dict[str, dict[str, str]] = {
    "glibc": {},  # SecantusDB as tests.servers starts it
    "mmap": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    "jemalloc": {
        "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "MALLOC_CONF": "dirty_decay_ms:1000,muzzy_decay_ms:0",
    },
}


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


class BenchSecantusServer(SecantusServer):
    """SecantusDB with a chosen allocator set-up (the bench's backend only, not the service).

    SecantusDB holds each cursor's whole result (1 MiB chunk documents) in memory. With
    glibc's defaults the mmap threshold grows after the first large frees and freed chunks
    stay in the heap, so its RSS hardly ever shrinks. ``mmap`` fixes the threshold at 128 KiB
    (every chunk its own mapping, returned when freed); ``jemalloc`` preloads jemalloc with
    a short decay.
    """

    def __init__(self, workdir: Path, malloc: str) -> None:
        super().__init__(workdir)
        self.malloc_env = SECANTUS_MALLOC[malloc]
        preload = self.malloc_env.get("LD_PRELOAD")
        if preload and not Path(preload).exists():
            log(f"{preload} is missing: SecantusDB runs with glibc's malloc")
            self.malloc_env = {}

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.malloc_env}


@dataclass
class Backends:
    mongo: SecantusServer
    vault: BaoServer

    @property
    def servers(self) -> list[Server]:
        return [self.mongo, self.vault]

    def cpu_seconds(self) -> dict[str, float]:
        return {s.name: group_cpu_seconds(s.proc.pid) for s in self.servers if s.proc is not None}


@contextlib.contextmanager
def running_backends(root: Path, malloc: str = "glibc") -> Iterator[Backends]:
    """SecantusDB and OpenBao, started at once; always stopped (their data is thrown away)."""
    mongo = BenchSecantusServer(root / "mongo", malloc)
    backends = Backends(mongo=mongo, vault=BaoServer(root / "openbao"))
    with running(backends.servers):
        yield backends


# --------------------------------------------------------------------------------------------
# Seeding: the carve as the assembler leaves it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Carve:
    carve_id: str
    block_size: int
    block_count: int
    archive_size: int
    archive_sha256: str
    member_path: str
    member_size: int
    member_sha256: str


def member_digest(archive: Path, name: str) -> tuple[int, str]:
    """Size and SHA-256 of one member, read back from the tar with the stdlib tarfile."""
    digest, size = hashlib.sha256(), 0
    with tarfile.open(archive, "r:") as tar:
        reader = tar.extractfile(tar.getmember(name))
        if reader is None:
            raise RuntimeError(f"{name} is not a regular file in {archive}")
        with reader:
            while piece := reader.read(READ_PIECE):
                digest.update(piece)
                size += len(piece)
    return size, digest.hexdigest()


async def insert_chunks(
    db: AsyncDatabase[Document], carve_id: str, archive: Path, block_size: int
) -> tuple[int, int, str]:
    """The archive as GridFS chunks, INSERT_BATCH per insert_many: (size, chunks, sha256)."""
    chunks = db[f"{BUCKET}.chunks"]
    digest, size, n = hashlib.sha256(), 0, 0
    with archive.open("rb") as fh:
        while True:
            docs: list[Document] = []
            while len(docs) < INSERT_BATCH and (data := fh.read(block_size)):
                digest.update(data)
                docs.append({"files_id": carve_id, "n": n, "data": Binary(data)})
                n, size = n + 1, size + len(data)
            if not docs:
                return size, n, digest.hexdigest()
            await chunks.insert_many(docs)


def carve_documents(carve: Carve, now: datetime) -> tuple[CarveDoc, Document]:
    """The ``carves`` document and the GridFS files document of a finalized carve."""
    filename = archive_filename(carve.carve_id, Compression.NONE)
    start = StartRequest(
        block_count=carve.block_count,
        block_size=carve.block_size,
        carve_size=carve.archive_size,
        carve_id=carve.carve_id,
        request_id=f"bench-{carve.carve_id[:8]}",
        node_key=uuid.uuid4().hex,
    )
    carve_doc = new_carve_doc(start, uuid.uuid4().hex, now)
    carve_doc.update(
        {
            "blocks_received": carve.block_count,
            "status": Status.COMPLETE.value,
            "compression": Compression.NONE.value,
            "sha256": carve.archive_sha256,
            "filename": filename,
            "completed_at": now,
        }
    )
    sha = carve.archive_sha256
    files = files_doc(
        carve_doc, filename=filename, sha256=sha, compression=Compression.NONE, now=now
    )
    return carve_doc, files


async def seed(
    db: AsyncDatabase[Document], size: int, workdir: Path, backends: Backends
) -> tuple[Carve, dict[str, Any]]:
    """Build the tar, store it as a complete carve; the carve and how long each step took."""
    carve_id = str(uuid.uuid4())
    member_name = carve_member_name(carve_id, MEMBER_PATH)
    started = time.perf_counter()
    archive = await asyncio.to_thread(
        build_synthetic_archive, size, workdir, carve_guid=carve_id, path=MEMBER_PATH
    )
    built = time.perf_counter()
    member_size, member_sha = await asyncio.to_thread(member_digest, archive, member_name)
    hashed = time.perf_counter()
    await ensure_indexes(db, BUCKET)
    cpu_before = backends.cpu_seconds()
    archive_size, count, sha = await insert_chunks(db, carve_id, archive, BLOCK_SIZE)
    carve = Carve(
        carve_id, BLOCK_SIZE, count, archive_size, sha, MEMBER_PATH, member_size, member_sha
    )
    carve_doc, files_doc = carve_documents(carve, datetime.now(UTC))
    await db[f"{BUCKET}.files"].insert_one(files_doc)
    await carves_of(db).insert_one(carve_doc)
    inserted = time.perf_counter()
    cpu_after = backends.cpu_seconds()
    archive.unlink()
    stats = {
        "build_archive_s": round(built - started, 2),
        "hash_member_s": round(hashed - built, 2),
        "insert_s": round(inserted - hashed, 2),
        "insert_mb_per_s": round(archive_size / MB / (inserted - hashed), 2),
        "insert_batch_chunks": INSERT_BATCH,
        "secantus_cpu_s": round(cpu_after["secantus"] - cpu_before["secantus"], 2),
    }
    return carve, stats


async def read_ceiling(db: AsyncDatabase[Document], carve: Carve) -> dict[str, Any]:
    """Raw chunk reads through PyMongo: one cursor, one chunk per batch (as the service asks)."""
    last = min(carve.block_count, CEILING_CHUNKS) - 1
    query = {"files_id": carve.carve_id, "n": {"$gte": 0, "$lte": last}}
    started, size = time.perf_counter(), 0
    cursor = db[f"{BUCKET}.chunks"].find(query, {"_id": 0}).sort("n", 1).batch_size(1)
    async for doc in cursor:
        size += len(doc["data"])
    seconds = time.perf_counter() - started
    return {
        "chunks": last + 1,
        "bytes": size,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / MB / seconds, 2),
    }


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    target: str  # "archive" or "member"
    purpose: str


# A20 last: it is the one that may need the memory guard, which ends SecantusDB.
SCENARIOS = (
    Scenario("A1", 1, "archive", "1 download of the whole archive"),
    Scenario("M20", 20, "member", "20 concurrent downloads of the tar member"),
    Scenario("A20", 20, "archive", "20 concurrent downloads of the whole archive"),
)


@dataclass(frozen=True)
class Expected:
    path: str
    size: int
    sha256: str
    header_sha256: str | None  # X-Carve-SHA256 (archive only)

    @classmethod
    def of(cls, target: str, carve: Carve) -> Expected:
        base = f"/api/v1/carves/{carve.carve_id}"
        if target == "archive":
            return cls(
                f"{base}/archive", carve.archive_size, carve.archive_sha256, carve.archive_sha256
            )
        return cls(f"{base}/files{carve.member_path}", carve.member_size, carve.member_sha256, None)


@dataclass
class Download:
    index: int
    status: int | None = None
    content_length: int | None = None
    header_sha256: str | None = None
    bytes: int = 0
    sha256: str = ""
    headers_s: float = 0.0
    elapsed_s: float = 0.0
    error: str | None = None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def check(self, expected: Expected) -> str | None:
        """What is wrong with this download, or None."""
        if self.error is not None:
            return self.error
        problems = []
        if self.status != 200:
            problems.append(f"HTTP {self.status}")
        if self.content_length != expected.size:
            problems.append(f"Content-Length {self.content_length} != {expected.size}")
        if self.bytes != expected.size:
            problems.append(f"{self.bytes} bytes received, {expected.size} expected")
        elif self.sha256 != expected.sha256:
            problems.append("SHA-256 mismatch")
        if expected.header_sha256 and self.header_sha256 != expected.header_sha256:
            problems.append(f"X-Carve-SHA256 {self.header_sha256}")
        return "; ".join(problems) or None


async def _receive(resp: aiohttp.ClientResponse, result: Download) -> None:
    result.status = resp.status
    result.content_length = resp.content_length
    result.header_sha256 = resp.headers.get("X-Carve-SHA256")
    if resp.status != 200:
        result.error = f"HTTP {resp.status}: {(await resp.read())[:300]!r}"
        return
    digest = hashlib.sha256()
    async for piece in resp.content.iter_any():
        digest.update(piece)
        result.bytes += len(piece)
    result.sha256 = digest.hexdigest()


async def fetch(
    http: aiohttp.ClientSession, url: str, token: str, expected: Expected, index: int
) -> Download:
    """One download, streamed and hashed, never raising: problems end up in ``error``."""
    result = Download(index)
    started = time.perf_counter()
    try:
        async with http.get(url + expected.path, headers={"X-Vault-Token": token}) as resp:
            result.headers_s = time.perf_counter() - started
            await _receive(resp, result)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.perf_counter() - started
    result.error = result.check(expected)
    return result


async def download_all(url: str, token: str, expected: Expected, clients: int) -> list[Download]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=SOCK_READ_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False
    ) as http:
        return list(
            await asyncio.gather(*(fetch(http, url, token, expected, i) for i in range(clients)))
        )


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


class MemoryGuard:
    """Lowest MemAvailable while inside the block; kills SecantusDB below ``floor_kb``.

    SecantusDB holds a cursor's whole result in memory (a 1 GiB archive per concurrent
    download, released as it is read), so 20 concurrent whole-archive downloads can take most
    of the machine's RAM. Killing our private server is better than the kernel's OOM killer
    picking a process; the downloads then fail and the scenario is reported with the reason.
    """

    def __init__(self, server: Server, floor_kb: int) -> None:
        self.server = server
        self.floor_kb = floor_kb
        self.min_kb = proc_kb("/proc/meminfo", "MemAvailable")
        self.tripped: str | None = None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        available = proc_kb("/proc/meminfo", "MemAvailable")
        self.min_kb = min(self.min_kb, available)
        if available >= self.floor_kb or self.tripped or self.server.proc is None:
            return
        self.tripped = f"MemAvailable {available // KiB} MiB < {self.floor_kb // KiB} MiB"
        log(f"memory guard: {self.tripped}: killing SecantusDB")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.proc.pid, signal.SIGKILL)

    async def _loop(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def __aenter__(self) -> MemoryGuard:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Context:
    backends: Backends
    env: dict[str, str]
    token: str
    carve: Carve
    workdir: Path
    min_available_kb: int


@dataclass
class Measured:
    downloads: list[Download]
    wall_s: float
    usage: dict[str, float]
    rss_ready_mib: float
    secantus_max_rss_mib: float
    min_available_mib: float
    guard_tripped: str | None
    backend_cpu: dict[str, float]
    bench_cpu: float
    rss_samples: int
    rss_series: dict[str, list[list[float]]]


async def measure(scenario: Scenario, ctx: Context, service: ServiceProcess) -> Measured:
    """Run the clients against a ready service; read its counters while it still lives."""
    pid = service.proc.pid
    cpu_ready = cpu_seconds(pid)
    rss_ready = proc_kb(f"/proc/{pid}/status", "VmRSS") / KiB
    backend_cpu, bench_cpu = ctx.backends.cpu_seconds(), time.process_time()
    expected = Expected.of(scenario.target, ctx.carve)
    mongo = ctx.backends.mongo
    pids = {"download": pid, "secantus": mongo.proc.pid if mongo.proc else 0}
    async with (
        RssSampler(pids) as sampler,
        MemoryGuard(mongo, ctx.min_available_kb) as guard,
    ):
        started = time.perf_counter()
        downloads = await download_all(service.url, ctx.token, expected, scenario.clients)
        wall = time.perf_counter() - started
    backend_after = ctx.backends.cpu_seconds()
    return Measured(
        downloads=downloads,
        wall_s=wall,
        usage=process_usage(pid, cpu_ready, sampler.max_kb["download"]),
        rss_ready_mib=round(rss_ready, 1),
        secantus_max_rss_mib=round(sampler.max_kb["secantus"] / KiB, 1),
        min_available_mib=round(guard.min_kb / KiB, 1),
        guard_tripped=guard.tripped,
        backend_cpu={k: round(v - backend_cpu.get(k, 0.0), 2) for k, v in backend_after.items()},
        bench_cpu=round(time.process_time() - bench_cpu, 2),
        rss_samples=sampler.samples,
        rss_series=sampler.series_mib(),
    )


def _rates(downloads: list[Download]) -> dict[str, float]:
    rates = sorted(d.mb_per_s for d in downloads) or [0.0]
    headers = sorted(d.headers_s for d in downloads) or [0.0]
    return {
        "per_download_mb_per_s_min": round(rates[0], 2),
        "per_download_mb_per_s_median": round(statistics.median(rates), 2),
        "per_download_mb_per_s_max": round(rates[-1], 2),
        "headers_s_median": round(statistics.median(headers), 3),
        "headers_s_max": round(headers[-1], 3),
        "slowest_download_s": round(max((d.elapsed_s for d in downloads), default=0.0), 2),
    }


def scenario_row(scenario: Scenario, ctx: Context, run: Measured, logs: Any) -> dict[str, Any]:
    expected = Expected.of(scenario.target, ctx.carve)
    total = sum(d.bytes for d in run.downloads)
    errors = [f"#{d.index}: {d.error}" for d in run.downloads if d.error]
    if run.guard_tripped:
        errors.insert(0, f"memory guard killed SecantusDB: {run.guard_tripped}")
    peak_mb = run.usage["peak_rss_mib"] * MiB / MB
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "clients": scenario.clients,
        "target": scenario.target,
        "path": expected.path,
        "bytes_each": expected.size,
        "sha256_expected": expected.sha256,
        "total_mb": round(total / MB, 1),
        "wall_s": round(run.wall_s, 2),
        "aggregate_mb_per_s": round(total / MB / run.wall_s, 2),
        **_rates(run.downloads),
        "download": {**run.usage, "rss_ready_mib": run.rss_ready_mib},
        "peak_rss_mb": round(peak_mb, 1),
        "rss_target_mb": RSS_TARGET_MB,
        # Only a scenario whose downloads all went through says anything about the target.
        "within_rss_target": None if errors else peak_mb <= RSS_TARGET_MB,
        "backend_cpu_s": run.backend_cpu,
        "secantus_max_sampled_rss_mib": run.secantus_max_rss_mib,
        "min_mem_available_mib": run.min_available_mib,
        "bench_process_cpu_s": run.bench_cpu,
        "rss_samples": run.rss_samples,
        "rss_series_mib": run.rss_series,
        "errors": errors,
        "error_count": len(errors),
        "service_log": logs,
        "downloads": [
            {**asdict(d), "mb_per_s": round(d.mb_per_s, 2), "elapsed_s": round(d.elapsed_s, 3)}
            for d in run.downloads
        ],
    }


def skipped_row(scenario: Scenario, reason: str) -> dict[str, Any]:
    log(f"{scenario.name}: skipped: {reason}")
    return {
        "name": scenario.name,
        "purpose": scenario.purpose,
        "clients": scenario.clients,
        "target": scenario.target,
        "skipped": reason,
        "within_rss_target": None,
        "errors": [f"skipped: {reason}"],
        "error_count": 1,
    }


async def run_scenario(scenario: Scenario, ctx: Context) -> dict[str, Any]:
    mongo = ctx.backends.mongo.proc
    if mongo is None or mongo.poll() is not None:
        return skipped_row(scenario, "SecantusDB is not running")
    log_path = ctx.workdir / f"download-{scenario.name}.log"
    service = ServiceProcess("download", ctx.env, log_path)
    try:
        try:
            await service.wait_ready(60.0)
        except (RuntimeError, TimeoutError) as exc:
            return skipped_row(scenario, f"the download service did not start: {exc}")
        log(f"{scenario.name}: service ready (pid {service.proc.pid}), {scenario.purpose}")
        run = await measure(scenario, ctx, service)
    finally:
        stop_service(service)
    row = scenario_row(scenario, ctx, run, log_summary(log_path))
    log(
        f"{scenario.name}: {row['total_mb']} MB in {row['wall_s']} s "
        f"({row['aggregate_mb_per_s']} MB/s), peak RSS {row['download']['peak_rss_mib']} MiB, "
        f"errors {row['error_count']}"
    )
    for error in row["errors"][:5]:
        log(f"{scenario.name}: {error}")
    if row["service_log"]["lines"]:
        log(f"{scenario.name}: service logged {row['service_log']['lines']} lines")
    return row


def service_env(backends: Backends, db_name: str, extra: dict[str, str]) -> dict[str, str]:
    return {
        "CARVE_MONGO_URL": backends.mongo.url,
        "CARVE_MONGO_DB": db_name,
        "CARVE_MONGO_BUCKET": BUCKET,
        "CARVE_VAULT_ADDR": backends.vault.url,
        "CARVE_LOG_LEVEL": "WARNING",
        **extra,
    }


def vault_token(backends: Backends) -> str:
    admin = VaultAdmin(backends.vault.url, backends.vault.root_token)
    admin.provision()
    return admin.token(POLICY, ttl="4h").token


@dataclass(frozen=True)
class Options:
    size: int
    clients: int
    only: set[str] | None
    extra_env: dict[str, str]
    quick: bool
    min_available_mib: int
    secantus_malloc: str
    scenarios: tuple[Scenario, ...] = SCENARIOS


def chosen(options: Options) -> list[Scenario]:
    picked = [s for s in options.scenarios if options.only is None or s.name in options.only]
    return [
        Scenario(s.name, s.clients if s.clients == 1 else options.clients, s.target, s.purpose)
        for s in picked
    ]


async def run_all(backends: Backends, workdir: Path, options: Options) -> dict[str, Any]:
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(
        backends.mongo.url, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    db = mongo[f"bench_download_{uuid.uuid4().hex[:8]}"]
    try:
        log(f"seeding a {human(options.size)} carve ({human(BLOCK_SIZE)} chunks)")
        carve, seeding = await seed(db, options.size, workdir, backends)
        log(
            f"seeded {carve.archive_size / MB:.1f} MB in {carve.block_count} chunks: insert "
            f"{seeding['insert_s']} s ({seeding['insert_mb_per_s']} MB/s)"
        )
        ceiling = await read_ceiling(db, carve)
        log(f"raw read ceiling: {ceiling['mb_per_s']} MB/s over {ceiling['chunks']} chunks")
        token = await asyncio.to_thread(vault_token, backends)
        env = service_env(backends, db.name, options.extra_env)
        ctx = Context(backends, env, token, carve, workdir, options.min_available_mib * KiB)
        rows = [await run_scenario(s, ctx) for s in chosen(options)]
    finally:
        alive = backends.mongo.proc is not None and backends.mongo.proc.poll() is None
        if alive:  # (a killed SecantusDB would only make this wait for a server selection)
            with contextlib.suppress(Exception):
                await mongo.drop_database(db.name)
        await mongo.close()
    return {
        "mode": "quick" if options.quick else "full",
        "secantus_malloc": options.secantus_malloc,
        "carve": asdict(carve),
        "seeding": seeding,
        "read_ceiling": ceiling,
        "scenarios": rows,
        "ok": all(row["error_count"] == 0 for row in rows),
        "rss_target": rss_verdict(rows),
    }


def rss_verdict(rows: list[dict[str, Any]]) -> str:
    """Whether the download service stayed within RSS_TARGET_MB, scenario by scenario."""
    above = [row["name"] for row in rows if row["within_rss_target"] is False]
    unknown = [row["name"] for row in rows if row["within_rss_target"] is None]
    verdict = f"ABOVE {RSS_TARGET_MB} MB in {','.join(above)}" if above else "within"
    if len(unknown) == len(rows):
        return "not measured (errors in every scenario)"
    if unknown:
        verdict += f"; not measured (errors) in {','.join(unknown)}"
    return verdict


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

THROUGHPUT_COLUMNS = (
    ("scen", "name"), ("clients", "clients"), ("what", "target"), ("MB each", "mb_each"),
    ("tot MB", "total_mb"), ("wall s", "wall_s"), ("agg MB/s", "aggregate_mb_per_s"),
    ("min MB/s", "per_download_mb_per_s_min"), ("med MB/s", "per_download_mb_per_s_median"),
    ("max MB/s", "per_download_mb_per_s_max"), ("hdr s med", "headers_s_median"),
    ("hdr s max", "headers_s_max"), ("errors", "error_count"),
)  # fmt: skip
RESOURCE_COLUMNS = (
    ("scen", "name"), ("ready RSS MiB", "download.rss_ready_mib"),
    ("HWM MiB", "download.peak_rss_mib"), ("max RSS MiB", "download.max_sampled_rss_mib"),
    ("HWM MB", "peak_rss_mb"), ("<=150MB", "within_rss_target"),
    ("download cpu s", "download.cpu_s_after_ready"), ("secantus cpu s", "backend_cpu_s.secantus"),
    ("openbao cpu s", "backend_cpu_s.openbao"), ("bench cpu s", "bench_process_cpu_s"),
    ("secantus max RSS MiB", "secantus_max_sampled_rss_mib"),
    ("min MemAvail MiB", "min_mem_available_mib"), ("samples", "rss_samples"),
)  # fmt: skip


def render(report: dict[str, Any]) -> str:
    m, carve, seeding = report["machine"], report["carve"], report["seeding"]
    ceiling = report["read_ceiling"]
    rows = [
        {**row, "mb_each": round(row["bytes_each"] / MB, 1)} if "bytes_each" in row else row
        for row in report["scenarios"]
    ]
    return "\n".join(
        [
            f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
            f"Python {m['python']}, SecantusDB {m['secantusdb']}, PyMongo {m['pymongo']}",
            f"mode: {report['mode']}, total {report['total_seconds']} s "
            f"(backends up in {report['backend_start_s']} s)",
            f"carve: {carve['archive_size'] / MB:.1f} MB archive in {carve['block_count']} x "
            f"{human(carve['block_size'])} chunks; member {carve['member_path']} "
            f"{carve['member_size'] / MB:.1f} MB",
            f"seeding: archive built in {seeding['build_archive_s']} s, inserted in "
            f"{seeding['insert_s']} s = {seeding['insert_mb_per_s']} MB/s (insert_many of "
            f"{seeding['insert_batch_chunks']} chunks; "
            f"SecantusDB cpu {seeding['secantus_cpu_s']} s)",
            f"raw read ceiling (PyMongo, 1 chunk per batch, {ceiling['chunks']} chunks): "
            f"{ceiling['mb_per_s']} MB/s",
            "",
            "throughput (MB = 10^6 bytes; per-download MB/s from request to last byte; "
            "hdr s = time to response headers):",
            columns_table(THROUGHPUT_COLUMNS, rows),
            "",
            "download service (fresh process per scenario; HWM = VmHWM, max RSS = largest "
            "0.2 s sample; cpu during the scenario):",
            columns_table(RESOURCE_COLUMNS, rows),
            "result: "
            + ("OK" if report["ok"] else "ERRORS (see errors in the JSON)")
            + f"; download service peak RSS vs {RSS_TARGET_MB} MB: {report['rss_target']}",
        ]
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def size_arg(text: str) -> int:
    """An argparse type: a size such as 1GiB or 64MB."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.download", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--size", type=size_arg, default=None, help="member size (default 1GiB; --quick 64MiB)"
    )
    parser.add_argument("--quick", action="store_true", help=f"{human(QUICK_SIZE)} carve")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--only", default="", help="comma-separated scenarios (A1,A20,M20)")
    add_service_env_option(parser, "the download service")
    parser.add_argument(
        "--secantus-malloc",
        choices=sorted(SECANTUS_MALLOC),
        default=DEFAULT_SECANTUS_MALLOC,
        help=f"SecantusDB's allocator set-up (default {DEFAULT_SECANTUS_MALLOC})",
    )
    parser.add_argument(
        "--min-available-mib",
        type=int,
        default=DEFAULT_MIN_AVAILABLE_MIB,
        help="kill SecantusDB if MemAvailable drops below this "
        f"(default {DEFAULT_MIN_AVAILABLE_MIB})",
    )
    parser.add_argument(
        "--json-out", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}"
    )
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> Options:
    size = args.size if args.size is not None else QUICK_SIZE if args.quick else DEFAULT_SIZE
    only = names(args.only)
    extra = dict(item.split("=", 1) for item in args.service_env)
    return Options(
        size,
        args.clients,
        only,
        extra,
        bool(args.quick),
        args.min_available_mib,
        args.secantus_malloc,
    )


def source_state(paths: Sequence[str] = ("services", "shared")) -> dict[str, Any]:
    """The commit and the uncommitted files, so a figure can be tied to the code it measured
    (with a hash of the uncommitted changes under ``paths``, the code being measured)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    diff = git("diff", "HEAD", "--", *paths)
    key = "_".join(paths) + "_diff_sha256"
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted": changed,
        key: hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def run(options: Options) -> dict[str, Any]:
    """Backends up, seed and scenarios, backends down (also on errors and Ctrl-C)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="carve-bench-download-"))
    try:
        log(f"starting SecantusDB and OpenBao under {workdir}")
        with running_backends(workdir / "backends", options.secantus_malloc) as backends:
            backend_start_s = round(time.perf_counter() - started, 1)
            report = uvloop.run(run_all(backends, workdir, options))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "started_at": started_at,
        "machine": machine_info(),
        "source": source_state(),
        **report,
        "backend_start_s": backend_start_s,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_of(args)
    report = interruptible(lambda: run(options))
    if report is None:
        return 130
    print(render(report))
    write_json(report, Path(args.json_out))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
