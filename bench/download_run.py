"""One download scenario: its clients against a fresh download service, with its counters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.download_clients import Download, Expected, download_all
from bench.download_seed import Carve
from bench.procstats import (
    MemoryGuard,
    RssSampler,
    backend_cpu,
    cpu_seconds,
    proc_kb,
    process_usage,
)
from bench.render import KiB
from devstack.backends import Backends
from devstack.services import ServiceProcess


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
    backends_before, bench_cpu = backend_cpu(ctx.backends), time.process_time()
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
    backend_after = backend_cpu(ctx.backends)
    return Measured(
        downloads=downloads,
        wall_s=wall,
        usage=process_usage(pid, cpu_ready, sampler.max_kb["download"]),
        rss_ready_mib=round(rss_ready, 1),
        secantus_max_rss_mib=round(sampler.max_kb["secantus"] / KiB, 1),
        min_available_mib=round(guard.min_kb / KiB, 1),
        guard_tripped=guard.tripped,
        backend_cpu={
            k: round(v - backends_before.get(k, 0.0), 2) for k, v in backend_after.items()
        },
        bench_cpu=round(time.process_time() - bench_cpu, 2),
        rss_samples=sampler.samples,
        rss_series=sampler.series_mib(),
    )
