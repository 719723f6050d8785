"""One host carving at osquery's default 8 KiB blocks: blocks/s, reply p50/p99, CPU per block.

A host sends its blocks one at a time, each after the previous reply, so what one
block costs end to end (ingest, RabbitMQ's confirm, Redis, the assembler's write)
is the host's whole speed. Per point: fresh ``carve-ingest`` and ``carve-assembler``
processes on private Redis, RabbitMQ and SecantusDB (started once for the run), the
simulator (``clients.osquery_sim``) as its own process, then a wait until every
carve is ``complete`` with the uploaded SHA-256 and every process has gone idle;
CPU milliseconds per block of each process come from /proc, as they are and net of
the process's idle rate (measured for 3 s before the point, times the point's
duration: on a slow, loaded run a broker's housekeeping would otherwise count as
per-block cost).

    .venv/bin/python -m bench.lone_host                       # 1 x 20 MB and 10 x 2 MB
    .venv/bin/python -m bench.lone_host --rounds 3 \\
        --variant base=/work/wt/base-latency --variant new=.   # two trees, alternated
    .venv/bin/python -m bench.lone_host --variant fixed=.,CARVE_PUBLISH_LINGER=0.002

A variant is ``LABEL=TREE[,KEY=VALUE...]``: the services run from TREE's
``services`` package (the bench and the simulator from this one) with the extra
environment. Rounds alternate the order of the variants (A B, B A, ...); the
report gives each figure's median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from bench.cli import log
from bench.procstats import backend_cpu, cpu_seconds, machine_info
from bench.services import running_backends, service_env
from clients.osquery_sim import parse_size
from devstack import ROOT
from devstack.backends import Backends
from devstack.ports import HOST, free_port
from shared.mongo import Document

POINTS = ("1x20MB", "10x2MB")
# The pipeline's processes whose CPU per block the targets add up.
PIPELINE = ("ingest", "assembler", "rabbitmq", "redis")
IDLE_STEP = 0.5  # s between CPU readings while waiting for every process to go idle
IDLE_CPU = 0.01  # CPU seconds of all processes together within a step that count as idle
IDLE_SAMPLE = 3.0  # s over which each process's idle CPU rate is measured before a point


@dataclass(frozen=True)
class Variant:
    label: str
    tree: Path
    env: dict[str, str] = field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    label, sep, rest = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError("expected LABEL=TREE[,KEY=VALUE...]")
    tree, *pairs = rest.split(",")
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{pair!r}: expected KEY=VALUE")
        env[key] = value
    path = Path(tree or ".").resolve()
    if not (path / "services" / "ingest").is_dir():
        raise argparse.ArgumentTypeError(f"{path} has no services/ingest")
    return Variant(label, path, env)


def parse_point(text: str) -> tuple[int, int]:
    hosts, sep, size = text.partition("x")
    if not sep:
        raise argparse.ArgumentTypeError("expected HOSTSxSIZE, e.g. 1x20MB")
    return int(hosts), parse_size(size)


class Service:
    """``python -m services.NAME`` run from ``tree`` (so that tree's code), on a free port."""

    def __init__(self, name: str, tree: Path, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.url = f"http://{HOST}:{free_port()}"
        full_env = {**os.environ, **env, "CARVE_HTTP_PORT": self.url.rsplit(":", 1)[1]}
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=full_env,
                cwd=tree,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _cpu(pids: dict[str, int], backends: Backends) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()} | backend_cpu(backends)


async def _wait_idle(pids: dict[str, int], backends: Backends, limit: float = 15.0) -> None:
    """Until every process together used under IDLE_CPU in one IDLE_STEP (or ``limit`` s)."""
    deadline = time.monotonic() + limit
    before = sum(_cpu(pids, backends).values())
    while time.monotonic() < deadline:
        await asyncio.sleep(IDLE_STEP)
        now = sum(_cpu(pids, backends).values())
        if now - before < IDLE_CPU:
            return
        before = now


async def _redis_commands(backends: Backends) -> int:
    async with Redis.from_url(backends.redis.url) as redis:
        stats = await redis.info("stats")
    return int(stats["total_commands_processed"])


def _simulate(url: str, hosts: int, size: int, block_size: int, seed: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "clients.osquery_sim", "--url", url, "--json"]
    command += ["--hosts", str(hosts), "--size", str(size), "--block-size", str(block_size)]
    command += ["--seed", str(seed)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"simulator failed: {done.stderr.decode(errors='replace')[-2000:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    document["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return document


async def _settled(mongo: AsyncMongoClient[Document], db: str, sums: dict[str, str]) -> int:
    """Wait until every carve is complete (at most 120 s); how many have the uploaded SHA-256."""
    carves = mongo[db]["carves"]
    deadline = time.monotonic() + 120
    query: dict[str, Any] = {"_id": {"$in": list(sums)}, "status": "complete"}
    while await carves.count_documents(query) < len(sums) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    docs = await carves.find(query, {"sha256": 1}).to_list()
    return sum(doc.get("sha256") == sums[doc["_id"]] for doc in docs)


async def run_point(
    backends: Backends,
    workdir: Path,
    variant: Variant,
    point: tuple[int, int],
    block_size: int,
    seed: int,
) -> dict[str, Any]:
    hosts, size = point
    tag = uuid.uuid4().hex[:8]
    env = service_env(backends, tag) | variant.env
    services = {
        name: Service(name, variant.tree, env, workdir / f"{name}-{tag}.log")
        for name in ("ingest", "assembler")
    }
    try:
        for service in services.values():
            await service.wait_ready()
        pids = {name: s.proc.pid for name, s in services.items()}
        await _wait_idle(pids, backends, 5.0)
        # What each process burns doing nothing (timers, the broker's housekeeping), so
        # that the net figure is the blocks' own cost however long the point ran.
        idle0, idle_at = _cpu(pids, backends), time.monotonic()
        await asyncio.sleep(IDLE_SAMPLE)
        before, started = _cpu(pids, backends), time.monotonic()
        commands0 = await _redis_commands(backends)
        idle_rate = {k: (before[k] - idle0[k]) / (started - idle_at) for k in before}
        sim = await asyncio.to_thread(
            _simulate, services["ingest"].url, hosts, size, block_size, seed
        )
        sums = {r["carve_id"]: r["sha256"] for r in sim["results"]}
        async with AsyncMongoClient[Document](backends.mongo.url) as mongo:
            verified = await _settled(mongo, f"bench_{tag}", sums)
        await _wait_idle(pids, backends)
        after, ended = _cpu(pids, backends), time.monotonic()
        commands = await _redis_commands(backends) - commands0 - 1  # less our own INFO
    finally:
        for service in services.values():
            service.stop()
    summary = sim["summary"]
    blocks = summary["blocks"]
    cpu_ms = {k: round(1e3 * (after[k] - before[k]) / blocks, 3) for k in after}
    cpu_ms["simulator"] = round(1e3 * sim["cpu_s"] / blocks, 3)
    idle_s = {k: idle_rate[k] * (ended - started) for k in after}
    net_ms = {k: round(1e3 * max(after[k] - before[k] - idle_s[k], 0.0) / blocks, 3) for k in after}
    net_ms["simulator"] = cpu_ms["simulator"]  # a process of its own: no idle time in it
    return {
        "variant": variant.label,
        "hosts": hosts,
        "size": size,
        "blocks": blocks,
        "blocks_per_s": summary["blocks_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "cpu_ms_per_block": cpu_ms,
        "pipeline_ms_per_block": round(sum(cpu_ms[k] for k in PIPELINE), 3),
        # The same, less each process's idle CPU rate (measured just before) over the point.
        "net_cpu_ms_per_block": net_ms,
        "net_pipeline_ms_per_block": round(sum(net_ms[k] for k in PIPELINE), 3),
        # Commands Redis ran (those inside a Lua script count one each) and calls it got.
        "redis_commands_per_block": round(commands / blocks, 2),
        "verified": verified,
        "ok": verified == hosts and summary["ok_hosts"] == hosts,
    }


async def run_all(backends: Backends, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = args.variant if r % 2 == 0 else list(reversed(args.variant))
        for point in args.points:
            for variant in order:
                run = await run_point(backends, workdir, variant, point, args.block_size, r)
                log(f"round {r + 1} {variant.label} {point[0]}x{point[1]}: {_line(run)}")
                runs.append(run)
    return {"load_avg_at_start": os.getloadavg(), "runs": runs, "medians": medians(runs)}


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["variant"], run["hosts"], run["size"]), []).append(run)
    out = []
    for (label, hosts, size), group in groups.items():
        med: dict[str, Any] = {"variant": label, "hosts": hosts, "size": size, "runs": len(group)}
        for key in (
            "blocks_per_s",
            "p50_ms",
            "p99_ms",
            "pipeline_ms_per_block",
            "net_pipeline_ms_per_block",
            "redis_commands_per_block",
        ):
            med[key] = round(statistics.median(run[key] for run in group), 3)
        for figure in ("cpu_ms_per_block", "net_cpu_ms_per_block"):
            med[figure] = {
                k: round(statistics.median(run[figure][k] for run in group), 3)
                for k in group[0][figure]
            }
        med["ok"] = all(run["ok"] for run in group)
        out.append(med)
    return out


def _line(run: dict[str, Any]) -> str:
    cpu, net = run["cpu_ms_per_block"], run["net_cpu_ms_per_block"]
    parts = ", ".join(
        f"{k} {cpu[k]:.3f} ({net[k]:.3f})" for k in (*PIPELINE, "secantus", "simulator")
    )
    return (
        f"{run['blocks_per_s']:.0f} blocks/s, p50 {run['p50_ms']:.2f} ms, "
        f"p99 {run['p99_ms']:.2f} ms; CPU ms/block (net of idle): {parts}; "
        f"pipeline {run['pipeline_ms_per_block']:.3f} ({run['net_pipeline_ms_per_block']:.3f}); "
        f"Redis commands per block {run['redis_commands_per_block']}"
        + ("" if run["ok"] else " NOT VERIFIED")
    )


def render(report: dict[str, Any]) -> str:
    lines = [f"load average at start: {report['load_avg_at_start']}"]
    for med in report["medians"]:
        size = med["size"] / 1e6
        lines.append(
            f"{med['variant']} {med['hosts']} x {size:g} MB (median of {med['runs']}): {_line(med)}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_host", description=__doc__)
    parser.add_argument(
        "--points", type=lambda s: [parse_point(p) for p in s.split(",")],
        default=[parse_point(p) for p in POINTS], help="HOSTSxSIZE,... (default 1x20MB,10x2MB)",
    )  # fmt: skip
    parser.add_argument("--block-size", type=parse_size, default=8192)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print the whole record as JSON")
    args = parser.parse_args(argv)
    args.variant = args.variant or [Variant("this", ROOT)]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="carve-lone-host-"))
    log(f"backends and logs under {workdir}")
    with running_backends(workdir / "backends") as backends:
        report = uvloop.run(run_all(backends, workdir, args))
    report["machine"] = machine_info()
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if all(m["ok"] for m in report["medians"]) else 1


if __name__ == "__main__":
    sys.exit(main())
