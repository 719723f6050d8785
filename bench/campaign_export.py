"""Campaign export benchmark: one ZIP of N complete carves, and what it costs the service.

Everything runs on this machine: a private SecantusDB and OpenBao dev server (``devstack``).
For each N, N complete carves of one request id are seeded straight into MongoDB as the
finalizer leaves them (a carve document with its host and manifest summary, its chunks, its
manifest), each from its own host, each archive ``--size`` bytes of pseudo-random data. A
fresh ``carve-download`` process then streams ``GET /api/v1/requests/<id>/export`` to this
process, which writes the ZIP to a temporary file. Measured: wall time, the download
process's CPU seconds (from /proc) and its RSS sampled every 0.1 s (before, largest, growth).
Then the ZIP is checked: zipfile's CRC-32 of every entry, every archive against its SHA-256
in ``manifest.json`` and against what was seeded, every carve present.

Flat memory means the growth does not follow N: compare the lines of one run.

    .venv/bin/python -m bench.campaign_export                         # 1,000 and 10,000 carves
    .venv/bin/python -m bench.campaign_export --carves 200 --size 4KiB   # a quick look

The exit status is 0 only if every ZIP verified.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
from bson import Binary
from pymongo import AsyncMongoClient

from bench.cli import log, size_arg
from bench.procstats import RssSampler, cpu_seconds, proc_kb
from bench.render import MiB
from bench.services import stop_service
from devstack.backends import running_backends
from devstack.services import ServiceProcess
from devstack.vault import POLICY, VaultAdmin
from shared.mongo import Document, ensure_indexes
from shared.search import search_terms

REQUEST_ID = "bench-campaign"
BATCH = 500


def carve_docs(n: int, size: int, now: datetime) -> tuple[Document, Document, Document, str]:
    """One seeded carve: its document, its (only) chunk, its manifest, its SHA-256."""
    data = random.Random(n).randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    carve_id = f"bench-{n:06d}"
    host = f"host-{n:05d}.corp.example"
    path = "/var/log/auth.log"
    carve = {
        "_id": carve_id,
        "carve_id": carve_id,
        "request_id": REQUEST_ID,
        "status": "complete",
        "block_count": 1,
        "block_size": size,
        "carve_size": size,
        "blocks_received": 1,
        "compression": "none",
        "sha256": sha,
        "filename": f"carve_{carve_id}.tar",
        "created_at": now,
        "updated_at": now,
        "completed_at": now,
        "host_name": host,
        "search": search_terms(host, [path]),
        "manifest": {"members": 1, "truncated": False, "error": None, "files": 1, "paths": [path]},
    }
    chunk = {"files_id": carve_id, "n": 0, "data": Binary(data)}
    member = {"path": path, "name": path, "type": "file", "size": size, "sha256": sha}
    manifest = {"_id": carve_id, "members": [member], "truncated": False, "error": None}
    return carve, chunk, manifest, sha


async def seed(url: str, db_name: str, count: int, size: int) -> dict[str, str]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(url)
    db = client[db_name]
    await ensure_indexes(db, "archives")
    now = datetime.now(UTC)
    shas: dict[str, str] = {}
    for start in range(0, count, BATCH):
        batch = [carve_docs(n, size, now) for n in range(start, min(start + BATCH, count))]
        await db["carves"].insert_many([b[0] for b in batch])
        await db["archives.chunks"].insert_many([b[1] for b in batch])
        await db["manifests"].insert_many([b[2] for b in batch])
        shas.update({b[0]["_id"]: b[3] for b in batch})
    await client.close()
    return shas


def verify(path: Path, shas: dict[str, str]) -> int:
    found = 0
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, "a CRC-32 differs"
        manifest = orjson.loads(zf.read("manifest.json"))
        for row in manifest["carves"]:
            digest = hashlib.sha256(zf.read(row["file"])).hexdigest()
            assert digest == row["sha256"] == shas[row["carve_id"]], row["carve_id"]
            found += 1
    assert found == len(shas), f"{found} of {len(shas)} carves"
    return found


async def export_once(
    env: dict[str, str], token: str, shas: dict[str, str], work: Path
) -> dict[str, float]:
    service = ServiceProcess("download", env, work / f"download-{len(shas)}.log")
    try:
        await service.wait_ready(60.0)
        await asyncio.sleep(1.0)
        pid = service.proc.pid
        before_kb = proc_kb(f"/proc/{pid}/status", "VmRSS")
        cpu0, started = cpu_seconds(pid), time.perf_counter()
        target = work / f"campaign-{len(shas)}.zip"
        async with RssSampler({"download": pid}) as rss, aiohttp.ClientSession() as http:
            url = f"{service.url}/api/v1/requests/{REQUEST_ID}/export"
            async with http.get(url, headers={"X-Vault-Token": token}) as resp:
                assert resp.status == 200, await resp.text()
                with target.open("wb") as out:
                    async for piece in resp.content.iter_chunked(1 << 20):
                        out.write(piece)
        wall, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu0
    finally:
        stop_service(service)
    verified = verify(target, shas)
    size = target.stat().st_size
    target.unlink()
    return {
        "carves": verified,
        "zip_mib": size / MiB,
        "seconds": wall,
        "mb_per_s": size / 1e6 / wall,
        "cpu_s": cpu,
        "cpu_ms_per_carve": cpu * 1000 / verified,
        "rss_before_mib": before_kb / 1024,
        "rss_peak_mib": rss.max_kb["download"] / 1024,
        "rss_growth_mib": (rss.max_kb["download"] - before_kb) / 1024,
    }


async def main_async(counts: list[int], size: int) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        with running_backends(work / "backends", ("mongo", "vault")) as backends:
            token = VaultAdmin.provisioned(backends.vault).token(POLICY, ttl="4h").token
            for count in counts:
                db_name = f"bench_export_{count}"
                env = {**backends.env(), "CARVE_MONGO_DB": db_name, "CARVE_LOG_LEVEL": "WARNING"}
                log(f"seeding {count} carves of {size} B")
                shas = await seed(backends.env()["CARVE_MONGO_URL"], db_name, count, size)
                log(f"exporting {count} carves")
                results.append(await export_once(env, token, shas, work))
    print("carves  ZIP MiB  seconds  MB/s  CPU s  CPU ms/carve  RSS before  peak  growth (MiB)")
    for r in results:
        print(
            f"{r['carves']:>6}  {r['zip_mib']:>7.1f}  {r['seconds']:>7.1f}  {r['mb_per_s']:>4.1f}  "
            f"{r['cpu_s']:>5.1f}  {r['cpu_ms_per_carve']:>12.2f}  {r['rss_before_mib']:>10.1f}  "
            f"{r['rss_peak_mib']:>4.1f}  {r['rss_growth_mib']:>6.1f}"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--carves", default="1000,10000", help="comma-separated campaign sizes")
    parser.add_argument("--size", type=size_arg, default=16 * 1024, help="bytes per archive")
    args = parser.parse_args()
    counts = [int(c) for c in args.carves.split(",")]
    return asyncio.run(main_async(counts, args.size))


if __name__ == "__main__":
    raise SystemExit(main())
