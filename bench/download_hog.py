"""Download slots under a hog: how soon another responder's download starts while one identity
tries to hold every stream slot, and how soon the hog's stalled streams are cut off.

One carve (``--size``, 32 MiB) is seeded into a private SecantusDB the way the assembler leaves
it (``bench.download_seed``); a private OpenBao dev server gives two tokens. The download
service runs in this process (the production factory, with the settings below). The hog opens
``--hogs`` archive downloads (64: the default CARVE_MAX_STREAMS) with one token, on sockets
with a 4 KiB receive buffer that read the first bytes of the answer and then nothing (or
``--hog-rate`` bytes a second, 4 KiB at a time: below the old per-piece write timeout). Then
the other responder downloads the whole archive. Printed: the hog's answers, the other's
status, its time to the headers and to the last byte (SHA-256 checked), and when each of the
hog's admitted streams was cut (its audit row ends ``aborted``), up to ``--wait`` seconds.

Run from the repository root; the same command on an older checkout measures the old code
(settings it does not know are ignored, as the services ignore unknown CARVE_* variables)::

    .venv/bin/python -m bench.download_hog          # 64 slots, 8 a responder, 8 KiB/s over 30 s
    .venv/bin/python -m bench.download_hog --window 5 --wait 40
    .venv/bin/python -m bench.download_hog --hog-rate 6144 --wait 120
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import AsyncMongoClient

from bench.cli import size_arg
from bench.download_seed import seed
from devstack.backends import Backends, running_backends
from devstack.ports import HOST, free_port
from devstack.vault import POLICY, VaultAdmin
from services.download.main import create_app
from services.download.settings import DownloadSettings


async def _hog(port: int, path: str, token: str) -> tuple[socket.socket, int]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (HOST, port))
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {token}\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    head = await asyncio.wait_for(loop.sock_recv(sock, 512), 30)
    return sock, int(head.split(b" ", 2)[1])


async def _trickle(sock: socket.socket, rate: float) -> None:
    """Read 4 KiB at a time, ``rate`` bytes a second on average, until the server cuts."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if not await loop.sock_recv(sock, 4096):
                return
        except OSError:
            return
        await asyncio.sleep(4096 / rate)


async def _other(url: str, token: str, sha256: str) -> dict[str, Any]:
    asked = time.monotonic()
    digest, size = hashlib.sha256(), 0
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"X-Vault-Token": token}) as resp:
            headers_s = time.monotonic() - asked
            async for piece in resp.content.iter_chunked(1 << 20):
                digest.update(piece)
                size += len(piece)
            status = resp.status
    ok = status != 200 or digest.hexdigest() == sha256
    return {
        "status": status,
        "headers_s": round(headers_s, 3),
        "done_s": round(time.monotonic() - asked, 3),
        "bytes": size,
        "sha256_ok": ok,
    }


async def run(backends: Backends, workdir: Path, options: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {k.removeprefix("CARVE_").lower(): v for k, v in backends.env().items()}
    name = f"hog_{uuid.uuid4().hex[:8]}"
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["mongo_url"], tz_aware=True)
    db = mongo[name]
    carve, _ = await seed(db, options.size, workdir, backends)
    settings = DownloadSettings(
        **env,
        mongo_db=name,
        http_port=0,
        max_streams=options.max_streams,
        streams_per_responder=options.per_responder,
        download_min_rate=options.min_rate,
        download_rate_window=options.window,
        download_write_timeout=options.write_timeout,
    )
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    vault = VaultAdmin.provisioned(backends.vault)
    hog, other = vault.token(POLICY), vault.token(POLICY)
    path = f"/api/v1/carves/{carve.carve_id}/archive"
    sockets: list[socket.socket] = []
    readers: list[asyncio.Task[None]] = []
    try:
        started = time.monotonic()
        statuses = []
        for _ in range(options.hogs):
            sock, status = await _hog(port, path, hog.token)
            sockets.append(sock)
            statuses.append(status)
        opened_s = time.monotonic() - started
        readers = [
            asyncio.create_task(_trickle(sock, options.hog_rate))
            for sock, status in zip(sockets, statuses, strict=True)
            if options.hog_rate and status == 200
        ]
        result = await _other(f"http://{HOST}:{port}{path}", other.token, carve.archive_sha256)
        admitted = statuses.count(200)
        cut: list[float] = []  # seconds from the first hog socket, 0.5 s resolution
        query = {"accessor": hog.accessor, "outcome": "aborted"}
        while time.monotonic() - started < options.wait and len(cut) < admitted:
            count = await db["audit"].count_documents(query)
            cut += [time.monotonic() - started] * (count - len(cut))
            await asyncio.sleep(0.5)
        return {
            "hog_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "hogs_opened_s": round(opened_s, 3),
            "other": result,
            "hog_streams_cut": len(cut),
            "hog_streams_admitted": admitted,
            "first_cut_s": round(cut[0], 1) if cut else None,
            "last_cut_s": round(cut[-1], 1) if cut else None,
        }
    finally:
        for reader in readers:
            reader.cancel()
        for sock in sockets:
            sock.close()
        await runner.cleanup()
        await mongo.drop_database(name)
        await mongo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size_arg, default=size_arg("32MiB"))
    parser.add_argument("--hogs", type=int, default=64)
    parser.add_argument("--max-streams", type=int, default=64)
    parser.add_argument("--per-responder", type=int, default=8)
    parser.add_argument("--min-rate", type=int, default=8 * 1024)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--write-timeout", type=float, default=60.0)
    parser.add_argument("--wait", type=float, default=100.0)
    parser.add_argument(
        "--hog-rate", type=float, default=0, help="bytes/s each hog reads (0: none at all)"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hog-") as root:
        with running_backends(Path(root), ("mongo", "vault")) as backends:
            figures = asyncio.run(run(backends, Path(root), options))
    settings = (
        f"max_streams={options.max_streams} per_responder={options.per_responder} "
        f"min_rate={options.min_rate} B/s window={options.window} s "
        f"write_timeout={options.write_timeout} s"
    )
    print(
        f"settings: {settings}; carve {options.size} bytes; {options.hogs} hog sockets "
        f"reading {options.hog_rate} B/s each"
    )
    for key, value in figures.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
