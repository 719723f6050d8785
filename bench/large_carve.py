"""One large carve end to end: upload, finalize, verified download, expiry by the janitor.

Starts private Redis, RabbitMQ, SecantusDB (on disk) and OpenBao, and the four services as
their own processes; then for each size (default 1 GB, then 10 GB, at 8 MiB blocks) carves a
synthetic archive with the osquery simulator, waits for ``complete``, downloads the archive
through the download service and checks its SHA-256, and lets ``carve-janitor --once`` (with a
one-second retention) expire it, sweep after sweep, until its chunks are gone. It prints the
time of every phase and every service's peak RSS (VmHWM), so the 10 GB figures read against
the 1 GB ones taken in the same run.

    .venv/bin/python -m bench.large_carve                      # 1 GB and 10 GB, about 10 min
    .venv/bin/python -m bench.large_carve --sizes 1GB --json   # one size

Needs about 2.5 x the largest size of free disk (the archive, GridFS, RabbitMQ's segments).
A figure for docs/benchmarks, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.cli import log
from bench.procstats import proc_kb
from bench.services import stop_service
from clients.osquery_sim import build_synthetic_archive, carve, parse_size
from devstack import ROOT
from devstack.backends import running_backends
from devstack.services import ServiceProcess
from devstack.vault import POLICY, VaultAdmin

MiB = 1024 * 1024
SERVICES = ("ingest", "assembler", "download")


def peak_rss_mib(pid: int) -> float:
    return round(proc_kb(f"/proc/{pid}/status", "VmHWM") / 1024, 1)


async def wait_status(url: str, token: str, carve_id: str, want: str, timeout: float) -> float:
    """Seconds until the carve reaches ``want`` (through the download API)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < timeout:
            async with http.get(
                f"{url}/api/v1/carves/{carve_id}", headers={"X-Vault-Token": token}
            ) as resp:
                if resp.status == 200 and (await resp.json())["status"] == want:
                    return time.monotonic() - started
            await asyncio.sleep(0.5)
    raise TimeoutError(f"carve {carve_id} not {want} after {timeout} s")


async def download(url: str, token: str, carve_id: str) -> tuple[str, int, float]:
    started = time.monotonic()
    digest, size = hashlib.sha256(), 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(
            f"{url}/api/v1/carves/{carve_id}/archive", headers={"X-Vault-Token": token}
        ) as resp,
    ):
        resp.raise_for_status()
        async for piece in resp.content.iter_chunked(MiB):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size, time.monotonic() - started


def janitor_until_gone(env: dict[str, str], logdir: Path) -> dict[str, Any]:
    """``carve-janitor --once`` until a sweep frees nothing: sweeps, seconds, peak RSS."""
    janitor_env = {**os.environ, **env, "CARVE_RETENTION": "1", "CARVE_JANITOR_BATCH": "1000"}
    sweeps, freed, peak, started = 0, 0, 0.0, time.monotonic()
    while True:
        command = [sys.executable, "-c", _JANITOR_ONCE]
        done = subprocess.run(
            command, env=janitor_env, cwd=ROOT, capture_output=True, text=True, check=False
        )
        (logdir / f"janitor-{sweeps}.log").write_text(done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"janitor failed: {done.stderr[-2000:]}")
        report, hwm = done.stdout.strip().splitlines()[-2:]
        sweeps += 1
        peak = max(peak, float(hwm))
        bytes_freed = json.loads(report).get("bytes_freed", 0)
        freed += bytes_freed
        if not bytes_freed:
            return {
                "sweeps": sweeps,
                "seconds": round(time.monotonic() - started, 1),
                "bytes_freed": freed,
                "peak_rss_mib": peak,
            }


# One janitor sweep in a child process, then its own VmHWM (a CronJob's --once, measured).
_JANITOR_ONCE = """
import sys
from services.janitor.__main__ import main
from bench.procstats import proc_kb
if code := main(["--once"]):
    sys.exit(code)
print(round(proc_kb("/proc/self/status", "VmHWM") / 1024, 1))
"""


async def one_carve(
    size: int, block: int, urls: dict[str, str], token: str, workdir: Path
) -> dict[str, Any]:
    guid = str(uuid.uuid4())
    folder = workdir / guid
    folder.mkdir()
    log(f"building a {size / 1e9:.1f} GB archive")
    archive = build_synthetic_archive(size, folder, carve_guid=guid, seed=7)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        result = await carve(http, urls["ingest"], archive, block_size=block, carve_id=guid)
        upload_s = time.monotonic() - started
    if not result.ok:
        raise RuntimeError(f"upload failed: {result.status}")
    complete_s = await wait_status(urls["download"], token, guid, "complete", 3600)
    log(f"uploaded in {upload_s:.1f} s, complete {complete_s:.1f} s after the last block")
    sha256, length, download_s = await download(urls["download"], token, guid)
    archive.unlink()
    return {
        "carve_id": guid,
        "archive_bytes": result.size,
        "block_size": block,
        "blocks": result.block_count,
        "upload_s": round(upload_s, 1),
        "upload_mb_per_s": round(result.size / 1e6 / upload_s, 1),
        "last_block_to_complete_s": round(complete_s, 1),
        "download_s": round(download_s, 1),
        "download_mb_per_s": round(length / 1e6 / download_s, 1),
        "download_verified": sha256 == result.sha256 and length == result.size,
    }


async def run(sizes: Sequence[int], block: int, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    with running_backends(workdir) as backends:
        token = VaultAdmin.provisioned(backends.vault).token(POLICY, ttl="8h").token
        for size in sizes:
            tag = uuid.uuid4().hex[:8]
            env = {
                **backends.env(),
                "CARVE_MONGO_DB": f"large_{tag}",
                "CARVE_AMQP_QUEUE": f"large.blocks.{tag}",
                "CARVE_REDIS_KEY_PREFIX": f"large{tag}:",
                "CARVE_LOG_LEVEL": "WARNING",
            }
            logdir = workdir / f"logs-{tag}"
            logdir.mkdir()
            procs = {n: ServiceProcess(n, env, logdir / f"{n}.log") for n in SERVICES}
            try:
                for proc in procs.values():
                    await proc.wait_ready(60.0)
                urls = {n: p.url for n, p in procs.items()}
                row = await one_carve(size, block, urls, token, workdir)
                row["peak_rss_mib"] = {n: peak_rss_mib(p.proc.pid) for n, p in procs.items()}
            finally:
                for proc in procs.values():
                    stop_service(proc)
            await asyncio.sleep(1.5)  # past the one-second retention
            row["janitor"] = await asyncio.to_thread(janitor_until_gone, env, logdir)
            log(f"{size / 1e9:.1f} GB: {row}")
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.large_carve", description=__doc__)
    parser.add_argument("--sizes", default="1GB,10GB")
    parser.add_argument("--block-size", default="8MiB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="carve-large-", dir=ROOT / ".run"))
    try:
        rows = asyncio.run(run(sizes, parse_size(args.block_size), workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(rows, indent=2) if args.json else "\n".join(map(str, rows)))
    return 0 if all(r["download_verified"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
