"""Benchmark matrix: uploads and downloads swept along every axis, with a JSON + Markdown report.

One command starts private Redis, RabbitMQ, SecantusDB and OpenBao servers (``devstack``),
measures their raw ceilings, then runs every point of the matrix with fresh service processes
(``python -m services.<name>``) and the project's osquery simulator in this process, and
writes ``matrix-latest.json``, ``matrix-latest.md`` and the PNG plots. Everything runs on this
machine and shares its cores: simulator, services and backends alike.

Upload points are ``bench.upload`` scenarios; download points are ``bench.download``
scenarios. A full factorial would take hours, so the matrix is a set of sweeps, each along one
axis from a baseline (10 hosts, uncompressed, one ingest and one assembler):

* block size (10 hosts, live): B8K, B256K, B1M, B8M (8 KiB, 256 KiB, 1 MiB, 8 MiB blocks);
* hosts carving at once (live): H1-8K, B8K, H50-8K, H200-8K at 8 KiB and D100M, B1M, H50-1M,
  H200-1M at 1 MiB;
* compression (zstd level 1 .tar.zst, as ``--compress`` of the simulator): Z8K and Z1M against
  B8K and B1M;
* replicas, *staged* (the assemblers are paused while the hosts upload, so "accepted" is the
  ingests' own rate and "drain" the assemblers' own): R8K-IxA and R1M-IxA for I ingests and A
  assemblers in 1x1, 2x1, 1x2, 2x2; with two ingests, host i talks to ingest i % 2;
* carve size (one host, 1 MiB blocks, live): D10M, D100M, D1G (RSS against carve size);
* downloads of one seeded carve (``--download-size``, 1 GiB by default): DA1 and DA20 (1 and
  20 concurrent whole-archive downloads), DM1 and DM20 (the same for the tar member).

MB = 10^6 bytes, MiB = 2^20 bytes; "1 MB blocks" of the targets are 1 MiB blocks here (what
osquery's ``--carver_block_size=1048576`` gives). ``--quick`` runs a few points at tiny sizes
(well under a minute) to check the machinery; it writes into a new temporary directory unless
``--out-dir`` says where.

Run from the repository root::

    .venv/bin/python -m bench.matrix                        # full matrix, about 10 minutes
    .venv/bin/python -m bench.matrix --quick --out-dir /tmp/matrix
    .venv/bin/python -m bench.matrix --only B8K,R8K-1x1 --json-out /tmp/m.json --out-dir /tmp/m
    .venv/bin/python -m bench.report docs/benchmarks/matrix-latest.json   # the report again

The exit status is 0 only if every carve ended ``SUCCESS``, ``complete`` and with the
uploaded SHA-256, and every download had the expected length and SHA-256.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from pymongo import AsyncMongoClient

from bench import download, upload, wrk_blocks
from bench.ceilings import measure_ceilings
from bench.cli import (
    add_service_env_option,
    interruptible,
    log,
    names,
    size_arg,
    source_state,
    write_json,
)
from bench.download_run import Scenario as DownloadScenario
from bench.matrix_points import (
    CEILING_SIZES,
    DEFAULT_DOWNLOAD_SIZE,
    FULL_DOWNLOADS,
    FULL_UPLOADS,
    QUICK_DOWNLOAD_SIZE,
    QUICK_DOWNLOADS,
    QUICK_UPLOADS,
    SWEEPS,
)
from bench.procstats import machine_info, proc_kb
from bench.render import MiB
from bench.report import size, write_report
from bench.services import EXTRA_ENV, UPLOAD_ROLES
from bench.targets import evaluate
from bench.upload_run import Context, Scenario
from devstack import ROOT
from devstack.backends import Backends, running_backends
from shared.mongo import Document

DEFAULT_OUT_DIR = ROOT / "docs" / "benchmarks"
REPORT_STEM = "matrix-latest"
SOURCE_PATHS = ("services", "shared", "clients", "bench")


@dataclass(frozen=True)
class Options:
    quick: bool
    only: set[str] | None
    download_size: int
    out_dir: Path
    json_out: Path
    service_env: dict[str, str] = field(default_factory=dict)

    @property
    def ceiling_seconds(self) -> float:
        return 0.3 if self.quick else 1.5

    def uploads(self) -> list[Scenario]:
        points = QUICK_UPLOADS if self.quick else FULL_UPLOADS
        return [p for p in points if self.only is None or p.name in self.only]

    def wrk_points(self) -> list[wrk_blocks.Point]:
        points = wrk_blocks.QUICK if self.quick else wrk_blocks.FULL
        return [p for p in points if self.only is None or p.name in self.only]

    def downloads(self) -> tuple[DownloadScenario, ...]:
        points = QUICK_DOWNLOADS if self.quick else FULL_DOWNLOADS
        return tuple(p for p in points if self.only is None or p.name in self.only)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@dataclass
class Servers:
    """All four backends; uploads and downloads see them through their own roles."""

    uploads: Backends
    downloads: Backends


@contextlib.contextmanager
def running_servers(root: Path) -> Iterator[Servers]:
    """Redis, RabbitMQ, SecantusDB and OpenBao started at once; always stopped."""
    with running_backends(root) as backends:
        yield Servers(backends.only(*UPLOAD_ROLES), backends.only("mongo", "vault"))


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------


def failed_row(name: str, kind: str, exc: BaseException) -> dict[str, Any]:
    """A point that could not be measured: an error, never a figure."""
    log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
    return {
        "name": name,
        "kind": kind,
        "sweeps": list(SWEEPS.get(name, ())),
        "failed": f"{type(exc).__name__}: {exc}",
        "errors": {"point_failed": 1},
        "error_count": 1,
    }


async def upload_point(scenario: Scenario, ctx: Context) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        row = await upload.run_scenario(scenario, ctx)
    except Exception as exc:  # one broken point must not hide the others' figures
        return failed_row(scenario.name, "upload", exc)
    row["point_s"] = round(time.perf_counter() - started, 1)
    return {"kind": "upload", "sweeps": list(SWEEPS.get(scenario.name, ())), **row}


async def run_uploads(
    servers: Servers, workdir: Path, options: Options, ceilings: dict[str, Any]
) -> list[dict[str, Any]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(servers.uploads.mongo.url)
    try:
        ctx = Context(servers.uploads, client, workdir, ceilings)
        return [await upload_point(scenario, ctx) for scenario in options.uploads()]
    finally:
        await client.close()


def download_row(row: dict[str, Any], read_ceiling: dict[str, Any]) -> dict[str, Any]:
    ceiling = read_ceiling["mb_per_s"]
    extra: dict[str, Any] = {"kind": "download", "sweeps": list(SWEEPS.get(row["name"], ()))}
    if "aggregate_mb_per_s" in row and ceiling:
        extra["aggregate_vs_read_ceiling"] = round(row["aggregate_mb_per_s"] / ceiling, 3)
    return {**extra, **row}


async def run_downloads(
    servers: Servers, workdir: Path, options: Options
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Seed one carve, then the download points; (seeding and read ceiling, rows)."""
    points = options.downloads()
    if not points:
        return None, []
    started = time.perf_counter()
    dl_options = download.Options(
        size=options.download_size,
        clients=max(p.clients for p in points),
        only=None,
        extra_env=options.service_env,
        quick=options.quick,
        min_available_mib=download.DEFAULT_MIN_AVAILABLE_MIB,
        secantus_malloc="glibc",  # the SecantusDB the uploads used, as devstack.servers starts it
        scenarios=points,
    )
    (workdir / "download").mkdir(parents=True, exist_ok=True)
    try:
        result = await download.run_all(servers.downloads, workdir / "download", dl_options)
    except Exception as exc:  # as for an upload point: report it, keep the rest
        return None, [failed_row(p.name, "download", exc) for p in points]
    summary = {k: result[k] for k in ("carve", "seeding", "read_ceiling", "rss_target")}
    summary["phase_s"] = round(time.perf_counter() - started, 1)
    return summary, [download_row(row, result["read_ceiling"]) for row in result["scenarios"]]


async def run_wrk(servers: Servers, workdir: Path, options: Options) -> list[dict[str, Any]]:
    """The cheap-client points (bench.wrk_blocks): CPU per block of every service."""
    rows = []
    for point in options.wrk_points():
        try:
            row = await wrk_blocks.run_point(servers.uploads, workdir / "wrk", point)
        except Exception as exc:  # as for the other points: report it, keep the rest
            row = failed_row(point.name, "wrk", exc)
        rows.append({"kind": "wrk", **row})
    return rows


async def run_all(servers: Servers, workdir: Path, options: Options) -> dict[str, Any]:
    ceilings = await measure_ceilings(servers.uploads, options.ceiling_seconds, CEILING_SIZES)
    rows = await run_uploads(servers, workdir, options, ceilings)
    wrk_rows = await run_wrk(servers, workdir, options)
    downloads, download_rows = await run_downloads(servers, workdir, options)
    return {
        "ceilings": ceilings,
        "points": rows + download_rows,
        "wrk": wrk_rows,
        "downloads": downloads,
    }


# --------------------------------------------------------------------------------------------
# The run and its record
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        **machine_info(),
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        "mem_available_gib_at_start": round(proc_kb("/proc/meminfo", "MemAvailable") / MiB, 1),
    }


def defined_points(options: Options) -> list[str]:
    uploads = QUICK_UPLOADS if options.quick else FULL_UPLOADS
    names = [p.name for p in uploads] + [p.name for p in FULL_DOWNLOADS]
    return names + [p.name for p in wrk_blocks.FULL]


def header(options: Options, started_at: str) -> dict[str, Any]:
    """What was measured, where and with what: the part of the record before any figure."""
    ran = {p.name for p in options.uploads()} | {p.name for p in options.downloads()}
    ran |= {p.name for p in options.wrk_points()}
    return {
        "kind": "bench.matrix",
        "mode": "quick" if options.quick else "full",
        "only": sorted(options.only) if options.only else None,
        "not_run": [name for name in defined_points(options) if name not in ran],
        "started_at": started_at,
        "machine": machine(),
        "source": source_state(SOURCE_PATHS),
        "options": {
            "download_size": options.download_size,
            "ceiling_seconds": options.ceiling_seconds,
            "service_env": options.service_env,
            "secantus_malloc": "glibc",
        },
    }


def run(options: Options) -> dict[str, Any]:
    """Backends up, ceilings and points, backends down (also on errors and Ctrl-C)."""
    record = header(options, datetime.now(UTC).isoformat(timespec="seconds"))
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="carve-bench-matrix-"))
    try:
        log(f"starting Redis, RabbitMQ, SecantusDB and OpenBao under {workdir}")
        with running_servers(workdir / "backends") as servers:
            record["backend_start_s"] = round(time.perf_counter() - started, 1)
            record |= uvloop.run(run_all(servers, workdir, options))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    record["targets"] = evaluate(record)
    rows = record["points"] + record["wrk"]
    record["error_count"] = sum(point["error_count"] for point in rows)
    record["ok"] = record["error_count"] == 0
    return record


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.matrix", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, well under a minute")
    parser.add_argument("--only", default="", help="comma-separated point names (e.g. B8K,DA20)")
    parser.add_argument(
        "--download-size",
        type=size_arg,
        default=None,
        help=f"seeded carve's member size (default {size(DEFAULT_DOWNLOAD_SIZE)}; "
        f"--quick {size(QUICK_DOWNLOAD_SIZE)})",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"where the Markdown report and PNGs go (default {DEFAULT_OUT_DIR}; "
        "--quick: a new temporary directory)",
    )
    parser.add_argument(
        "--json-out", type=Path, default=None, help=f"default OUT_DIR/{REPORT_STEM}.json"
    )
    add_service_env_option(parser, "every service under test")
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    out_dir = args.out_dir
    if out_dir is None:
        # A smoke run never overwrites the committed report.
        out_dir = Path(tempfile.mkdtemp(prefix="carve-matrix-quick-")) if quick else DEFAULT_OUT_DIR
    size = args.download_size
    if size is None:
        size = QUICK_DOWNLOAD_SIZE if quick else DEFAULT_DOWNLOAD_SIZE
    return Options(
        quick=quick,
        only=names(args.only),
        download_size=size,
        out_dir=out_dir,
        json_out=args.json_out or out_dir / f"{REPORT_STEM}.json",
        service_env=dict(item.split("=", 1) for item in args.service_env),
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = options_of(parse_args(argv))
    unknown = (options.only or set()) - set(SWEEPS)
    if unknown:
        log(f"unknown point(s): {', '.join(sorted(unknown))}; known: {', '.join(SWEEPS)}")
        return 2
    EXTRA_ENV.update(options.service_env)
    record = interruptible(lambda: run(options))
    if record is None:
        return 130
    write_json(record, options.json_out)
    write_report(record, options.out_dir, options.json_out.stem)
    log(f"{'OK' if record['ok'] else 'ERRORS'}: {record['error_count']} error(s)")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
