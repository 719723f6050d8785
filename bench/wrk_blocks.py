"""CPU per block with a client that costs next to nothing: Debian's wrk and a Lua script.

The osquery simulator is Python on the same two cores as what it measures: at
8 KiB blocks it costs about as much as the ingest. wrk is C with LuaJIT, one
thread driving every connection. Each point starts a fresh ingest and
assembler, opens one carve per connection (each its own host, so no host
limit applies), and lets wrk send distinct valid blocks of those carves for a
fixed time. The headline figure is each service's CPU microseconds per
accepted block, read from /proc before and after (the assembler's until it has
stored every accepted block), beside requests/s and latency from wrk.

Every point is checked: every reply was 200 with the JSON success body, the
ingest counted exactly as many accepted blocks as wrk sent requests, and
MongoDB holds exactly that many chunks once the assembler drained.

    .venv/bin/python -m bench.wrk_blocks                 # 8 KiB and 1 MiB at 10 and 50 connections
    .venv/bin/python -m bench.wrk_blocks --quick         # a second per point: correctness only
    .venv/bin/python -m bench.wrk_blocks --only W8K-c50 --seconds 10

Also part of ``bench.matrix`` (points W8K-c10, W8K-c50, W1M-c10, W1M-c50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pybase64
from pymongo import AsyncMongoClient

from bench.cli import log
from bench.procstats import backend_cpu, cpu_seconds
from bench.services import running_backends, running_services, service_env
from clients.osquery_sim import start_body
from devstack.backends import Backends
from devstack.services import scrape

KiB, MiB = 1024, 1024 * 1024
WRK = shutil.which("wrk") or "/usr/bin/wrk"


@dataclass(frozen=True)
class Point:
    name: str
    connections: int
    block_size: int
    seconds: float


FULL = (
    Point("W8K-c10", 10, 8 * KiB, 8.0),
    Point("W8K-c50", 50, 8 * KiB, 8.0),
    Point("W1M-c10", 10, MiB, 8.0),
    Point("W1M-c50", 50, MiB, 8.0),
)
QUICK = tuple(replace(p, seconds=1.0) for p in FULL if p.connections == 10)

# Blocks per carve: more than one connection can send in a point (wrk never runs out).
_BLOCKS_PER_CARVE = {8 * KiB: 200_000, MiB: 4_000}

_LUA = r"""
-- One carve per connection slot; request i sends block floor(i / n) of carve i %% n.
local carves = { %(carves)s }
local n = #carves
local data = "%(data)s"
local i = -1
errors = 0  -- global: done() reads it from each thread
local threads = {}
setup = function(thread) table.insert(threads, thread) end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i + 1
  local c = carves[(i %% n) + 1]
  local body = '{"block_id":' .. math.floor(i / n) .. ',"session_id":"' .. c[1] ..
    '","request_id":"' .. c[2] .. '","data":"' .. data .. '"}'
  return wrk.format(nil, "%(path)s", nil, body)
end

response = function(status, headers, body)
  if status ~= 200 or body ~= '{"success":true}' then errors = errors + 1 end
end

done = function(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("errors") end
  io.write(string.format(
    'WRK-RESULT {"requests":%%d,"seconds":%%f,"p50_us":%%d,"p99_us":%%d,"max_us":%%d,' ..
    '"socket_errors":%%d,"non_2xx":%%d,"bad_replies":%%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, summary.errors.status, bad))
end
"""


def lua_script(carves: Sequence[tuple[str, str]], block: bytes, path: str) -> str:
    """The wrk script: session and request ids are [A-Za-z0-9_-] and UUIDs, safe in Lua."""
    items = ", ".join(f'{{"{sid}", "{rid}"}}' for sid, rid in carves)
    data = pybase64.b64encode(block).decode()
    return _LUA % {"carves": items, "data": data, "path": path}


async def open_carves(url: str, point: Point) -> list[tuple[str, str]]:
    """One carve per connection, each from its own host (its own node key)."""
    count = _BLOCKS_PER_CARVE[point.block_size]
    carves = []
    async with aiohttp.ClientSession() as http:
        for c in range(point.connections):
            request_id = str(uuid.uuid4())
            body = start_body(
                block_count=count,
                block_size=point.block_size,
                carve_size=count * point.block_size,
                carve_id=str(uuid.uuid4()),
                request_id=request_id,
                node_key=f"wrk-host-{c}-{uuid.uuid4().hex[:8]}",
            )
            async with http.post(url + "/start_uploads", data=body) as resp:
                reply = await resp.json()
                assert resp.status == 200, reply
            carves.append((str(reply["session_id"]), request_id))
    return carves


def run_wrk(url: str, script: Path, point: Point) -> tuple[dict[str, Any], float]:
    """wrk's figures (from the script's done()) and the CPU seconds wrk itself used."""
    command = [WRK, "-t1", f"-c{point.connections}", f"-d{point.seconds:g}s"]
    command += ["--timeout", "16s", "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, check=False, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    found = re.search(r"^WRK-RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(found.group(1)), cpu


async def settled_count(url: str) -> int:
    """Accepted blocks, once the requests wrk left in flight at its deadline have ended."""
    last = -1
    while True:
        metrics = await scrape(url)
        count = int(metrics.get('carve_blocks_total{outcome="accepted"}', 0))
        if count == last:
            return count
        last = count
        await asyncio.sleep(0.5)


async def drained(mongo_url: str, db: str, want: int, timeout: float = 120.0) -> int:
    """Chunks stored once the assembler caught up with ``want`` accepted blocks."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        chunks = client[db]["archives.chunks"]
        deadline = time.monotonic() + timeout
        stored = 0
        while time.monotonic() < deadline:
            stored = await chunks.estimated_document_count()
            if stored >= want:
                return await chunks.count_documents({})
            await asyncio.sleep(0.2)
        return stored
    finally:
        await client.close()


def _us(seconds: float, blocks: int) -> float:
    return round(1e6 * seconds / blocks, 1) if blocks else 0.0


async def run_point(backends: Backends, workdir: Path, point: Point) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    env = service_env(backends, tag)
    logdir = workdir / point.name
    logdir.mkdir(parents=True, exist_ok=True)
    async with running_services(env, logdir) as procs:
        ingest, assembler = procs["ingest"], procs["assembler"]
        carves = await open_carves(ingest.url, point)
        script = logdir / "blocks.lua"
        block = bytes(range(256)) * (point.block_size // 256)
        script.write_text(lua_script(carves, block, "/upload_blocks"))
        pids = {"ingest": ingest.proc.pid, "assembler": assembler.proc.pid}
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()} | backend_cpu(backends)
        figures, wrk_cpu = await asyncio.to_thread(run_wrk, ingest.url, script, point)
        accepted = await settled_count(ingest.url)
        ingest_cpu = cpu_seconds(pids["ingest"]) - cpu0["ingest"]
        stored = await drained(env["CARVE_MONGO_URL"], env["CARVE_MONGO_DB"], accepted)
        cpu1 = {n: cpu_seconds(p) for n, p in pids.items()} | backend_cpu(backends)
    cpu = {n: cpu1[n] - cpu0.get(n, 0.0) for n in cpu1} | {"ingest": ingest_cpu}
    errors = {
        "bad_replies": figures["bad_replies"],
        "socket_errors": figures["socket_errors"],
        # wrk stops counting at its deadline: up to one request per connection was still in
        # flight then, accepted by the ingest but not counted by wrk.
        "accepted_vs_requests": int(not 0 <= accepted - figures["requests"] <= point.connections),
        "stored_vs_accepted": abs(stored - accepted),
    }
    row: dict[str, Any] = {
        "name": point.name,
        "connections": point.connections,
        "block_size": point.block_size,
        "seconds": round(figures["seconds"], 2),
        "requests": figures["requests"],
        "accepted_blocks": accepted,
        "stored_chunks": stored,
        "requests_per_s": round(figures["requests"] / figures["seconds"], 1),
        "p50_ms": round(figures["p50_us"] / 1000, 3),
        "p99_ms": round(figures["p99_us"] / 1000, 3),
        "cpu_us_per_block": {n: _us(s, accepted) for n, s in sorted(cpu.items())},
        "wrk_us_per_block": _us(wrk_cpu, figures["requests"]),
        "errors": {k: v for k, v in errors.items() if v},
    }
    if point.block_size >= MiB:
        row["ingest_cpu_ms_per_mib"] = round(1e3 * cpu["ingest"] / max(1, accepted), 3)
    row["error_count"] = sum(row["errors"].values())
    log(f"{point.name}: {row['requests_per_s']} req/s, cpu us/block {row['cpu_us_per_block']}")
    return row


async def run_points(backends: Backends, workdir: Path, points: Sequence[Point]) -> list[Any]:
    return [await run_point(backends, workdir, point) for point in points]


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["point      req/s     p99 ms  ingest us  assembler us  redis  rabbitmq  secantus"]
    for r in rows:
        cpu = r["cpu_us_per_block"]
        lines.append(
            f"{r['name']:<9} {r['requests_per_s']:>8} {r['p99_ms']:>9} {cpu['ingest']:>10} "
            f"{cpu['assembler']:>13} {cpu.get('redis', 0):>6} {cpu.get('rabbitmq', 0):>9} "
            f"{cpu.get('secantus', 0):>9}  errors {r['error_count']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wrk_blocks", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", type=lambda s: set(s.split(",")), default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per point (default 8)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    points = [p for p in (QUICK if args.quick else FULL) if not args.only or p.name in args.only]
    if args.seconds:
        points = [replace(p, seconds=args.seconds) for p in points]
    workdir = Path(tempfile.mkdtemp(prefix="carve-bench-wrk-"))
    try:
        with running_backends(workdir / "backends") as backends:
            rows = asyncio.run(run_points(backends, workdir, points))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0 if all(r["error_count"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
