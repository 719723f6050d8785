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
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench.ceilings import measure_ceilings
from bench.cli import add_service_env_option, log, names
from bench.render import GB, MB, KiB, MiB, human
from bench.runs import record_run, report_main
from bench.services import (
    EXTRA_ENV,
    log_summary,
    replica_labels,
    running_backends,
    running_services,
    service_env,
)
from bench.upload_report import render, rss_growth, scenario_row
from bench.upload_run import Context, Scenario, build_archives, check_carves, drive
from devstack import ROOT
from devstack.backends import Backends
from shared.mongo import Document

DEFAULT_JSON = ROOT / "docs" / "benchmarks" / "upload-latest.json"
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
    return record_run(
        "carve-bench-",
        "Redis, RabbitMQ and SecantusDB",
        running_backends,
        lambda backends, workdir: run_all(backends, workdir, quick, only),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    EXTRA_ENV.update(item.split("=", 1) for item in args.service_env)
    return report_main(lambda: run(bool(args.quick), names(args.only)), render, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
