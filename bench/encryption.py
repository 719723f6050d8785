"""Encryption at rest, on against off in one run: CPU per MiB and per 8 KiB block.

python -m bench.encryption [--rounds 3] [--mib 48] [--small-mib 8] [--out FILE]

Private backends (Redis, RabbitMQ, SecantusDB, OpenBao with Transit and AppRole) and two
sets of service processes, ingest + assembler + download, one with CARVE_ENCRYPTION=none and
one with vault-transit, run side by side; the rounds alternate between them so both see the
same machine load. Each round uploads carves (1 MiB blocks, then 8 KiB blocks) through the
ingest, waits until every carve is complete (ingest-to-complete), then downloads each one
whole. Figures: CPU seconds of each process from /proc (not wall time: the machine is
shared), per MiB and per 8 KiB block; minor page faults per MiB (fresh memory the kernel
maps in, paid in system CPU: where large chunk buffers churn); Vault Transit calls per
carve (the services' ``carve_transit_calls_total``); the time of one Transit round trip; and
AES-256-GCM alone in this process, for scale. Targets (issue 25): at most 10 % more CPU at
1 MiB blocks and 15 % at 8 KiB, summed over the assembler and the download.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.cli import log
from bench.procstats import cpu_seconds, minor_faults
from bench.services import stop_service
from clients.osquery_sim import block_body, start_body
from devstack.backends import running_backends
from devstack.services import ServiceProcess, scrape
from devstack.vault import POLICY, VaultAdmin, provision_transit
from shared.crypto.chunks import ChunkCipher, new_data_key
from shared.crypto.transit import Transit
from shared.settings import EncryptionSettings, VaultSettings

MiB = 1024 * 1024
KiB = 1024
SERVICES = ("ingest", "assembler", "download")


@contextlib.asynccontextmanager
async def service_set(
    env: dict[str, str], roles: dict[str, dict[str, str]], logdir: Path, mode: str
) -> AsyncIterator[dict[str, ServiceProcess]]:
    tag = f"{mode}{uuid.uuid4().hex[:6]}"
    own = {
        **env,
        "CARVE_ENCRYPTION": mode,
        "CARVE_MONGO_DB": f"bench_{tag}",
        "CARVE_AMQP_QUEUE": f"bench.blocks.{tag}",
        "CARVE_EVENTS_EXCHANGE": f"bench.events.{tag}",
        "CARVE_REDIS_KEY_PREFIX": f"bench{tag}:",
        "CARVE_LOG_LEVEL": "WARNING",
        # every carve comes from one simulated host: more than its 30 starts a minute
        "CARVE_MAX_STARTS_PER_HOST_PER_MINUTE": "100000",
    }
    procs = {
        name: ServiceProcess(name, {**own, **roles.get(name, {})}, logdir / f"{mode}-{name}.log")
        for name in SERVICES
    }
    try:
        for proc in procs.values():
            await proc.wait_ready(60.0)
        yield procs
    finally:
        for proc in procs.values():
            stop_service(proc)


async def upload(http: aiohttp.ClientSession, ingest: str, data: bytes, block: int) -> str:
    carve_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    count = -(-len(data) // block)
    body = start_body(
        block_count=count, block_size=block, carve_size=len(data),
        carve_id=carve_id, request_id=request_id, node_key="",
    )  # fmt: skip
    async with http.post(ingest + "/start_uploads", data=body) as resp:
        answer = await resp.json()
        assert "session_id" in answer, f"start_uploads answered {resp.status}: {answer}"
        session = answer["session_id"]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def sender() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            piece = data[i * block : (i + 1) * block]
            async with http.post(
                ingest + "/upload_blocks", data=block_body(i, session, request_id, piece)
            ) as resp:
                assert resp.status == 200, await resp.text()

    await asyncio.gather(*(sender() for _ in range(8)))
    return carve_id


async def wait_complete(
    http: aiohttp.ClientSession, download: str, token: str, ids: list[str]
) -> None:
    pending = set(ids)
    while pending:
        for carve_id in list(pending):
            async with http.get(
                f"{download}/api/v1/carves/{carve_id}", headers={"X-Vault-Token": token}
            ) as resp:
                if resp.status == 200 and (await resp.json())["status"] == "complete":
                    pending.discard(carve_id)
        await asyncio.sleep(0.05)


def cpu(procs: dict[str, ServiceProcess]) -> dict[str, float]:
    return {name: cpu_seconds(proc.proc.pid) for name, proc in procs.items()}


def faults(procs: dict[str, ServiceProcess]) -> dict[str, int]:
    return {name: minor_faults(proc.proc.pid) for name, proc in procs.items()}


async def one_round(
    procs: dict[str, ServiceProcess], token: str, block: int, total: int, carves: int
) -> dict[str, float]:
    data = [bytes(uuid.uuid4().bytes * (total // carves // 16)) for _ in range(carves)]
    async with aiohttp.ClientSession() as http:
        before, faulted, started = cpu(procs), faults(procs), time.monotonic()
        ids = [await upload(http, procs["ingest"].url, d, block) for d in data]
        await wait_complete(http, procs["download"].url, token, ids)
        ingest_to_complete = time.monotonic() - started
        middle, faulted_middle = cpu(procs), faults(procs)
        for carve_id, expected in zip(ids, data, strict=True):
            async with http.get(
                f"{procs['download'].url}/api/v1/carves/{carve_id}/archive",
                headers={"X-Vault-Token": token},
            ) as resp:
                assert await resp.read() == expected
        after, faulted_after = cpu(procs), faults(procs)
    mib = sum(len(d) for d in data) / MiB
    return {
        "mib": mib,
        "blocks": sum(-(-len(d) // block) for d in data),
        "seconds_ingest_to_complete": ingest_to_complete,
        "cpu_ingest": middle["ingest"] - before["ingest"],
        "cpu_assembler": middle["assembler"] - before["assembler"],
        "cpu_download": after["download"] - middle["download"],
        "faults_assembler": faulted_middle["assembler"] - faulted["assembler"],
        "faults_download": faulted_after["download"] - faulted_middle["download"],
    }


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    mib = sum(r["mib"] for r in rows)
    blocks = sum(r["blocks"] for r in rows)
    out = {k: sum(r[k] for r in rows) for k in ("cpu_ingest", "cpu_assembler", "cpu_download")}
    return {
        "mib": mib,
        "blocks": blocks,
        "assembler_ms_per_mib": 1000 * out["cpu_assembler"] / mib,
        "download_ms_per_mib": 1000 * out["cpu_download"] / mib,
        "ingest_ms_per_mib": 1000 * out["cpu_ingest"] / mib,
        "assembler_us_per_block": 1e6 * out["cpu_assembler"] / blocks,
        "download_us_per_block": 1e6 * out["cpu_download"] / blocks,
        "assembler_faults_per_mib": sum(r["faults_assembler"] for r in rows) / mib,
        "download_faults_per_mib": sum(r["faults_download"] for r in rows) / mib,
        "ingest_to_complete_s_median": statistics.median(
            r["seconds_ingest_to_complete"] for r in rows
        ),
    }


def aes_alone(block: int, total: int) -> dict[str, float]:
    cipher = ChunkCipher("bench-carve", new_data_key())
    plain = bytes(block)
    count = max(1, total // block)
    started = time.process_time()
    sealed = [cipher.seal(n, plain) for n in range(count)]
    sealing = time.process_time() - started
    started = time.process_time()
    for n, s in enumerate(sealed):
        cipher.open(n, s)
    opening = time.process_time() - started
    mib = count * block / MiB
    return {"seal_ms_per_mib": 1000 * sealing / mib, "open_ms_per_mib": 1000 * opening / mib}


async def vault_round_trip(url: str, roles: dict[str, dict[str, str]]) -> dict[str, float]:
    settings = EncryptionSettings(
        encryption="vault-transit",
        vault_role_id=roles["assembler"]["CARVE_VAULT_ROLE_ID"],
        vault_secret_id=roles["assembler"]["CARVE_VAULT_SECRET_ID"],
    )
    transit = Transit(VaultSettings(vault_addr=url), settings)
    try:
        name = transit.key_name("bench-rtt")
        _, wrapped = await transit.new_data_key(name)
        times = []
        cpu_before = time.process_time()  # this process, its hvac threads included
        for _ in range(50):
            started = time.perf_counter()
            await transit.unwrap(name, wrapped)
            times.append(time.perf_counter() - started)
        cpu_ms = 1000 * (time.process_time() - cpu_before) / 50
    finally:
        transit.close()
    return {
        "unwrap_ms_median": 1000 * statistics.median(times),
        "unwrap_ms_p95": 1000 * sorted(times)[47],
        "client_cpu_ms_per_call": cpu_ms,
    }


async def calls_per_carve(procs: dict[str, ServiceProcess], carves: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for name in ("assembler", "download"):
        for sample, value in (await scrape(procs[name].url)).items():
            if sample.startswith("carve_transit_calls_total"):
                op = sample.split("op=")[1].strip('"}')
                if op != "probe":  # readiness checks, per scrape: not a carve's cost
                    found[f"{name}:{op}"] = value / carves
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-encryption-"))
    try:
        return await _run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    with running_backends(root, ("redis", "rabbit", "mongo", "vault")) as backends:
        admin = VaultAdmin.provisioned(backends.vault)
        roles = provision_transit(admin.client)
        token = admin.token(POLICY).token
        env = backends.env()
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        async with (
            service_set(env, roles, root, "none") as off,
            service_set(env, roles, root, "vault-transit") as on,
        ):
            sets = {"none": off, "vault-transit": on}
            for block, total, label in (
                (MiB, args.mib * MiB, "1MiB"),
                (8 * KiB, args.small_mib * MiB, "8KiB"),
            ):
                for k in range(args.rounds):
                    for mode in (
                        ("none", "vault-transit") if k % 2 == 0 else ("vault-transit", "none")
                    ):
                        row = await one_round(sets[mode], token, block, total, args.carves)
                        results.setdefault(label, {}).setdefault(mode, []).append(row)
                        shown = json.dumps({a: round(b, 3) for a, b in row.items()})
                        log(f"{label} {mode} round {k + 1}: {shown}")
            carves_done = 2 * args.rounds * args.carves
            calls = await calls_per_carve(on, carves_done)
        rtt = await vault_round_trip(backends.vault.url, roles)
    summary: dict[str, Any] = {"calls_per_carve": calls, "vault_round_trip": rtt}
    for label, modes in results.items():
        off_s, on_s = summarize(modes["none"]), summarize(modes["vault-transit"])
        paid = on_s["assembler_ms_per_mib"] + on_s["download_ms_per_mib"]
        base = off_s["assembler_ms_per_mib"] + off_s["download_ms_per_mib"]
        paid_all, base_all = paid + on_s["ingest_ms_per_mib"], base + off_s["ingest_ms_per_mib"]
        summary[label] = {
            "off": off_s, "on": on_s,
            "extra_cpu_assembler_plus_download_pct": 100 * (paid - base) / base,
            "extra_cpu_all_three_pct": 100 * (paid_all - base_all) / base_all,
            "aes_gcm_alone": aes_alone(MiB if label == "1MiB" else 8 * KiB, 64 * MiB),
        }  # fmt: skip
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.encryption", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode and block size")
    parser.add_argument("--mib", type=int, default=48, help="MiB per round, 1 MiB blocks")
    parser.add_argument("--small-mib", type=int, default=8, help="MiB per round, 8 KiB blocks")
    parser.add_argument("--carves", type=int, default=4, help="carves per round")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
