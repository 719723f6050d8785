"""carve-triage end to end: from a carve's ``complete`` to its ``triaged``, many carves at once.

    .venv/bin/python -m bench.triage_latency --hosts 20 --size 10MB --rules 500

Starts Redis, RabbitMQ and SecantusDB, the ingest, the assembler and ``carve-triage`` as
processes (``--workers`` scans at once); ``--hosts`` simulated osquery hosts carve at once.
For each carve the latency is its ``triage.finished`` minus its ``completed_at`` (both
written by the services on this machine's clock). Prints p50, p90, p99 and max, the
verdicts (all must be clean: the generated rules match nothing), carve-triage's CPU seconds
(service and workers, /proc) and the load average (the machine is shared). Figures, not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench.cli import size_arg
from bench.events_latency import latency_ms
from bench.procstats import cpu_seconds, machine_info
from bench.services import running_backends, running_services, service_env
from bench.triage_scan import generated_rules
from clients.osquery_sim import build_synthetic_archive, carve_many


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (carve-triage and its scan workers)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
                if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return total


async def run(hosts: int, size: int, rules: int, workers: int, workdir: Path) -> dict[str, Any]:
    rules_dir, sets_dir = workdir / "rules", workdir / "hashsets"
    rules_dir.mkdir()
    sets_dir.mkdir()
    (rules_dir / "generated.yar").write_text(generated_rules(rules, random.Random(3)))
    archives = [
        build_synthetic_archive(size, workdir, carve_guid=str(uuid.uuid4()), seed=i)
        for i in range(hosts)
    ]
    with running_backends(workdir / "backends") as backends:
        env = {
            **service_env(backends, uuid.uuid4().hex[:8]),
            "CARVE_TRIAGE_RULES": str(rules_dir),
            "CARVE_TRIAGE_HASHSETS": str(sets_dir),
            "CARVE_TRIAGE_WORKERS": str(workers),
        }
        replicas = {"ingest": 1, "assembler": 1, "triage": 1}
        async with running_services(env, workdir, replicas) as procs:
            triage_pid = procs["triage"].proc.pid
            cpu0 = tree_cpu_seconds(triage_pid)
            started = time.monotonic()
            results = await carve_many(procs["ingest"].url, archives, block_size=256 * 1024)
            ok = sum(r.ok for r in results)
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                env["CARVE_MONGO_URL"], tz_aware=True
            )
            carves = mongo[env["CARVE_MONGO_DB"]]["carves"]
            deadline, docs = time.monotonic() + 600, []
            while time.monotonic() < deadline:
                docs = await carves.find({"triage.status": "done"}).to_list()
                if len(docs) >= ok:
                    break
                await asyncio.sleep(0.1)
            elapsed = time.monotonic() - started
            cpu = tree_cpu_seconds(triage_pid) - cpu0
            await mongo.close()
    latencies = [(d["triage"]["finished"] - d["completed_at"]).total_seconds() for d in docs]
    return {
        "hosts": hosts,
        "carve_bytes": size,
        "rules": rules,
        "workers": workers,
        "carves_ok": ok,
        "triaged": len(docs),
        "verdicts": dict(Counter(d["triage"]["verdict"] for d in docs)),
        "seconds": round(elapsed, 1),
        "triage_cpu_s": round(cpu, 2),
        "complete_to_triaged_ms": latency_ms(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--size", type=size_arg, default=size_arg("10MB"))
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine_info(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        report |= asyncio.run(run(args.hosts, args.size, args.rules, args.workers, Path(tmp)))
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
