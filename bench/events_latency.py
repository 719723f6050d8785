"""Carve events end to end: from a carve's ``complete`` to its webhook's 2xx, many hosts at once.

    .venv/bin/python -m bench.events_latency --hosts 50 --size 2MB --block-size 64KiB

Starts Redis, RabbitMQ and SecantusDB, the ingest, the assembler and ``carve-events`` as
processes, and a webhook receiver in this process; ``--hosts`` simulated osquery hosts carve at
once. For each carve.completed delivery the latency is the receiver's clock minus the carve's
``completed_at`` (written by the finalizer, milliseconds; same machine, same clock). Prints
p50, p90, p99 and max, and how many events of each type arrived (every carve must give one
started and one completed, once each). Figures, not a test: docs/benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from bench.cli import size_arg
from bench.services import running_backends, running_services, service_env
from clients.osquery_sim import build_synthetic_archive, carve_many
from devstack.ports import HOST, free_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_ms(latencies: list[float]) -> dict[str, float] | None:
    """p50/p90/p99/max/mean of latencies in seconds, as milliseconds; None for none."""
    if not latencies:
        return None
    return {
        "p50": round(1000 * percentile(latencies, 0.5), 1),
        "p90": round(1000 * percentile(latencies, 0.9), 1),
        "p99": round(1000 * percentile(latencies, 0.99), 1),
        "max": round(1000 * max(latencies), 1),
        "mean": round(1000 * statistics.fmean(latencies), 1),
    }


async def run(hosts: int, size: int, block_size: int, workdir: Path) -> dict[str, Any]:
    received: list[tuple[float, dict[str, Any]]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((time.time(), json.loads(body)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    secret = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()
    config = workdir / "webhooks.yaml"
    config.write_text(yaml.safe_dump([{"name": "bench", "url": f"http://{HOST}:{port}/hook",
                                       "secret": secret}]))  # fmt: skip
    archives = [
        build_synthetic_archive(size, workdir, carve_guid=str(uuid.uuid4()), seed=i)
        for i in range(hosts)
    ]
    try:
        with running_backends(workdir / "backends") as backends:
            env = {
                **service_env(backends, uuid.uuid4().hex[:8]),
                "CARVE_WEBHOOKS_FILE": str(config),
            }
            replicas = {"ingest": 1, "assembler": 1, "events": 1}
            async with running_services(env, workdir, replicas) as procs:
                started = time.monotonic()
                url = procs["ingest"].url
                results = await carve_many(url, archives, block_size=block_size)
                ok = sum(r.ok for r in results)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    done = [e for _, e in received if e["type"] == "carve.completed"]
                    if len(done) >= ok:
                        break
                    await asyncio.sleep(0.1)
                elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    latencies = [
        at - datetime.fromisoformat(e["data"]["completed_at"]).timestamp()
        for at, e in received
        if e["type"] == "carve.completed"
    ]
    kinds = Counter(e["type"] for _, e in received)
    ids = Counter(e["id"] for _, e in received)
    return {
        "hosts": hosts,
        "carve_bytes": size,
        "block_size": block_size,
        "carves_ok": ok,
        "events": dict(kinds),
        "duplicate_ids": sum(1 for n in ids.values() if n > 1),
        "seconds": round(elapsed, 1),
        "complete_to_2xx_ms": latency_ms(latencies),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--size", type=size_arg, default=size_arg("2MB"))
    parser.add_argument("--block-size", type=size_arg, default=size_arg("64KiB"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        report = asyncio.run(run(args.hosts, args.size, args.block_size, Path(tmp)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
