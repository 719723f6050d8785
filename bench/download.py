"""Download benchmark: how fast and how lean the download service streams a large carve.

Everything runs on this machine: a private SecantusDB (MongoDB wire protocol, pure Python) and
an OpenBao dev server (the ``devstack`` servers, in a temporary directory). One carve is
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
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench.cli import (
    add_service_env_option,
    log,
    names,
    size_arg,
    source_state,
)
from bench.download_report import render, rss_verdict, scenario_row, skipped_row
from bench.download_run import SCENARIOS, Context, Scenario, measure
from bench.download_seed import BLOCK_SIZE, BUCKET, read_ceiling, seed
from bench.render import MB, GiB, KiB, MiB, human
from bench.runs import record_run, report_main
from bench.services import log_summary, stop_service
from devstack import ROOT
from devstack.backends import Backends
from devstack.backends import running_backends as running_roles
from devstack.servers import SecantusServer
from devstack.services import ServiceProcess
from devstack.vault import POLICY, VaultAdmin
from shared.mongo import Document

DEFAULT_SIZE = 1 * GiB
QUICK_SIZE = 64 * MiB
DEFAULT_JSON = ROOT / "docs" / "benchmarks" / "download-latest.json"
DEFAULT_MIN_AVAILABLE_MIB = 3072
DEFAULT_SECANTUS_MALLOC = "jemalloc"
SECANTUS_MALLOC: dict[str, dict[str, str]] = {
    "glibc": {},  # SecantusDB as devstack.servers starts it
    "mmap": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    "jemalloc": {
        "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "MALLOC_CONF": "dirty_decay_ms:1000,muzzy_decay_ms:0",
    },
}


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


@contextlib.contextmanager
def running_backends(root: Path, malloc: str = "glibc") -> Iterator[Backends]:
    """SecantusDB and OpenBao, started at once; always stopped (their data is thrown away)."""
    mongo = BenchSecantusServer(root / "mongo", malloc)
    with running_roles(root, ("mongo", "vault"), mongo=mongo) as backends:
        yield backends


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
    """The download service's CARVE_* settings: SecantusDB and OpenBao, the seeded database."""
    return {
        **backends.env(),
        "CARVE_MONGO_DB": db_name,
        "CARVE_MONGO_BUCKET": BUCKET,
        "CARVE_LOG_LEVEL": "WARNING",
        **extra,
    }


def vault_token(backends: Backends) -> str:
    return VaultAdmin.provisioned(backends.vault).token(POLICY, ttl="4h").token


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


def run(options: Options) -> dict[str, Any]:
    """Backends up, seed and scenarios, backends down (also on errors and Ctrl-C)."""
    return record_run(
        "carve-bench-download-",
        "SecantusDB and OpenBao",
        lambda root: running_backends(root, options.secantus_malloc),
        lambda backends, workdir: run_all(backends, workdir, options),
        lambda: {"source": source_state()},
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_of(args)
    return report_main(lambda: run(options), render, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
