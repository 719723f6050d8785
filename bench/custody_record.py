"""Custody record benchmark: what issuing and checking a signed record costs, by access count.

Everything runs on this machine: a private SecantusDB and OpenBao dev server (``devstack``),
Transit and the services' AppRoles as ``scripts/run.sh`` sets them up (the download role
holds the custody policy). For each N, one complete carve is seeded with a manifest of
``--members`` files and N audit rows (its accesses: downloads with a justification), then a
fresh ``carve-download`` process answers ``GET .../custody`` ``--rounds`` times. Measured: the
record's size, the median and slowest wall time of one request (Transit sign and key read
included), the download process's CPU per record (from /proc), and the offline check
(``shared.custody.verify``: canonical form + ed25519) in this process. Every record is
verified; the exit status is 0 only if all were.

    .venv/bin/python -m bench.custody_record                       # 100, 1,000 and 10,000
    .venv/bin/python -m bench.custody_record --accesses 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
from pymongo import AsyncMongoClient

from bench.cli import log
from bench.procstats import cpu_seconds
from bench.services import stop_service
from devstack.backends import running_backends
from devstack.services import ServiceProcess
from devstack.vault import POLICY, VaultAdmin, provision_transit
from shared.custody import load_keys, verify
from shared.mongo import Document, ensure_indexes

CARVE = "bench-custody"


async def seed(url: str, db_name: str, accesses: int, members: int) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(url)
    db = client[db_name]
    await ensure_indexes(db, "archives")
    now = datetime.now(UTC)
    files = [
        {"path": f"/var/log/f{i}.log", "type": "file", "size": i, "sha256": f"{i:064x}"}
        for i in range(members)
    ]
    await db["carves"].insert_one(
        {
            "_id": CARVE, "carve_id": CARVE, "request_id": "bench", "status": "complete",
            "block_count": 1, "block_size": 1024, "carve_size": 1024, "blocks_received": 1,
            "compression": "none", "sha256": hashlib.sha256(b"x").hexdigest(),
            "filename": f"carve_{CARVE}.tar", "created_at": now, "updated_at": now,
            "completed_at": now, "host_name": "host-1.corp.example",
        }
    )  # fmt: skip
    await db["manifests"].insert_one({"_id": CARVE, "members": files, "truncated": False})
    rows = [
        {
            "action": "archive", "client": "10.0.0.7", "carve_id": CARVE,
            "time": now + timedelta(seconds=i), "outcome": "allowed", "status": 200,
            "display_name": f"userpass-analyst{i % 40}", "entity_id": f"ent-{i % 40}",
            "accessor": "acc", "bytes_sent": 1024, "code": None,
            "justification": f"IR-2026-{i:04d}: review of the collected logs",
        }
        for i in range(accesses)
    ]  # fmt: skip
    for start in range(0, len(rows), 5000):
        await db["audit"].insert_many(rows[start : start + 5000])
    await client.close()


async def measure(env: dict[str, str], token: str, rounds: int, work: Path) -> dict[str, float]:
    service = ServiceProcess("download", env, work / f"download-{rounds}.log")
    try:
        await service.wait_ready(60.0)
        pid = service.proc.pid
        headers = {"X-Vault-Token": token}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{service.url}/api/v1/custody/keys", headers=headers) as resp:
                keys = load_keys(await resp.text())
            times, cpu0, body = [], cpu_seconds(pid), b""
            for _ in range(rounds):
                started = time.perf_counter()
                async with http.get(
                    f"{service.url}/api/v1/carves/{CARVE}/custody", headers=headers
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    body = await resp.read()
                times.append(time.perf_counter() - started)
            cpu = cpu_seconds(pid) - cpu0
    finally:
        stop_service(service)
    started = time.perf_counter()
    record = verify(orjson.loads(body), keys)
    check = time.perf_counter() - started
    return {
        "accesses": record["accesses"]["listed"],
        "kib": len(body) / 1024,
        "median_ms": statistics.median(times) * 1000,
        "max_ms": max(times) * 1000,
        "cpu_ms": cpu * 1000 / rounds,
        "verify_ms": check * 1000,
    }


async def main_async(counts: list[int], members: int, rounds: int) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-custody-") as tmp:
        work = Path(tmp)
        with running_backends(work / "backends", ("mongo", "vault")) as backends:
            admin = VaultAdmin.provisioned(backends.vault)
            role = provision_transit(admin.client)["download"]
            token = admin.token(POLICY, ttl="4h").token
            for count in counts:
                db_name = f"bench_custody_{count}"
                env = {**backends.env(), **role, "CARVE_MONGO_DB": db_name}
                env["CARVE_LOG_LEVEL"] = "WARNING"
                log(f"seeding a carve with {count} accesses and {members} members")
                await seed(backends.env()["CARVE_MONGO_URL"], db_name, count, members)
                results.append(await measure(env, token, rounds, work))
    print("accesses  record KiB  median ms  max ms  CPU ms/record  offline verify ms")
    for r in results:
        print(
            f"{r['accesses']:>8.0f}  {r['kib']:>10.1f}  {r['median_ms']:>9.1f}  "
            f"{r['max_ms']:>6.1f}  {r['cpu_ms']:>13.1f}  {r['verify_ms']:>17.1f}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accesses", default="100,1000,10000", help="comma-separated counts")
    parser.add_argument("--members", type=int, default=1000, help="files in the manifest")
    parser.add_argument("--rounds", type=int, default=10, help="records fetched per count")
    args = parser.parse_args()
    counts = [int(c) for c in args.accesses.split(",")]
    return asyncio.run(main_async(counts, args.members, args.rounds))


if __name__ == "__main__":
    raise SystemExit(main())
