"""What one host at 8 KiB blocks could reach at best with this design's mandatory steps.

``bench.lone_host`` measures the services; this measures floors under them, with the
same simulator, backends and machine, so that a target can be judged against what no
code of ours could beat. ``bench.floor_server`` does per block only: ``http`` (read
the body, answer), ``publish`` (and publish it to a quorum queue, answered once
confirmed), ``publish-redis`` (and one Redis script call), with the ingest's own
libraries; ``services`` is ``carve-ingest`` + ``carve-assembler`` as ``bench.lone_host``
runs them. Rounds alternate the order of the modes; medians are printed.

    .venv/bin/python -m bench.lone_floor --rounds 3
    .venv/bin/python -m bench.lone_floor --rounds 3 --point 10x2MB
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiormq
import uvloop
from redis.asyncio import Redis

from bench.cli import log
from bench.lone_host import Variant, _cpu, _simulate, _wait_idle, parse_point, run_point
from bench.procstats import machine_info
from bench.services import running_backends
from clients.osquery_sim import parse_size
from devstack import ROOT
from devstack.backends import Backends
from devstack.ports import HOST, free_port

MODES = ("http", "publish", "publish-redis", "services")


async def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"floor server exited with {proc.returncode}")
            try:
                async with http.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("floor server not ready")


async def floor_point(
    backends: Backends, workdir: Path, mode: str, point: tuple[int, int], block_size: int, seed: int
) -> dict[str, Any]:
    hosts, size = point
    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "bench.floor_server", "--mode", mode, "--port", str(port)]
    command += ["--amqp", backends.rabbit.url, "--redis", backends.redis.url]
    queue = f"floor.{uuid.uuid4().hex[:8]}"
    command += ["--queue", queue]
    with (workdir / f"floor-{mode}.log").open("ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        await _ready(url, proc)
        pids = {"server": proc.pid}
        await _wait_idle(pids, backends, 5.0)
        before = _cpu(pids, backends)
        sim = await asyncio.to_thread(_simulate, url, hosts, size, block_size, seed)
        after = _cpu(pids, backends)
        done = await _work_done(backends, queue) if mode != "http" else {}
    finally:
        proc.terminate()
        proc.wait(30)
    summary = sim["summary"]
    blocks = summary["blocks"]
    cpu = {
        k: round(1e3 * (after[k] - before[k]) / blocks, 3) for k in ("server", "rabbitmq", "redis")
    }
    cpu["simulator"] = round(1e3 * sim["cpu_s"] / blocks, 3)
    return {
        "mode": mode,
        "blocks_per_s": summary["blocks_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "cpu_ms_per_block": cpu,
        # What the floor did, counted in the servers: messages in the queue, blocks marked.
        **done,
        "ok": summary["ok_hosts"] == hosts
        and done.get("queued", blocks) == blocks
        and done.get("marked", blocks if mode != "publish-redis" else 0) == blocks,
    }


async def _work_done(backends: Backends, queue: str) -> dict[str, int]:
    connection = await aiormq.connect(backends.rabbit.url)
    try:
        channel = await connection.channel()
        declared = await channel.queue_declare(queue, passive=True)
    finally:
        await connection.close()
    marked = 0
    async with Redis.from_url(backends.redis.url) as redis:
        async for key in redis.scan_iter(match="floor:*", _type="hash"):
            marked += int(await redis.hget(key, "confirmed") or 0)
            await redis.delete(key, key + b":bits")
    return {"queued": int(declared.message_count or 0), "marked": marked}


async def services_point(
    backends: Backends, workdir: Path, point: tuple[int, int], block_size: int, seed: int
) -> dict[str, Any]:
    run = await run_point(backends, workdir, Variant("services", ROOT), point, block_size, seed)
    net = run["net_cpu_ms_per_block"]
    return {
        "mode": "services",
        "blocks_per_s": run["blocks_per_s"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "cpu_ms_per_block": {
            "server": round(net["ingest"] + net["assembler"], 3),
            "ingest": net["ingest"],
            "assembler": net["assembler"],
            "rabbitmq": net["rabbitmq"],
            "redis": net["redis"],
            "secantus": net["secantus"],
            "simulator": net["simulator"],
        },
        "ok": run["ok"],
    }


async def run_all(backends: Backends, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = args.modes if r % 2 == 0 else list(reversed(args.modes))
        for mode in order:
            if mode == "services":
                run = await services_point(backends, workdir, args.point, args.block_size, r)
            else:
                run = await floor_point(backends, workdir, mode, args.point, args.block_size, r)
            log(f"round {r + 1} {mode}: {_line(run)}")
            runs.append(run)
    medians = []
    for mode in args.modes:
        group = [run for run in runs if run["mode"] == mode]
        med: dict[str, Any] = {"mode": mode, "runs": len(group)}
        for key in ("blocks_per_s", "p50_ms", "p99_ms"):
            med[key] = round(statistics.median(run[key] for run in group), 3)
        med["cpu_ms_per_block"] = {
            k: round(statistics.median(run["cpu_ms_per_block"][k] for run in group), 3)
            for k in group[0]["cpu_ms_per_block"]
        }
        med["ok"] = all(run["ok"] for run in group)
        medians.append(med)
    return {"load_avg_at_start": os.getloadavg(), "runs": runs, "medians": medians}


def _line(run: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {v:.3f}" for k, v in run["cpu_ms_per_block"].items())
    return (
        f"{run['blocks_per_s']:.0f} blocks/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f}"
        f" ms; CPU ms/block: {cpu}" + ("" if run["ok"] else " FAILED")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lone_floor", description=__doc__)
    parser.add_argument(
        "--point", type=parse_point, default=(1, parse_size("20MB")), help="HOSTSxSIZE (1x20MB)"
    )
    parser.add_argument("--block-size", type=parse_size, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="carve-lone-floor-"))
    log(f"backends and logs under {workdir}")
    with running_backends(workdir / "backends") as backends:
        report = uvloop.run(run_all(backends, workdir, args))
    report["machine"] = machine_info()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"load average at start: {report['load_avg_at_start']}")
        for med in report["medians"]:
            print(f"{med['mode']} (median of {med['runs']}): {_line(med)}")
    return 0 if all(m["ok"] for m in report["medians"]) else 1


if __name__ == "__main__":
    sys.exit(main())
