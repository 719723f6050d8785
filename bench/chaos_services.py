"""What ``bench.chaos`` runs and breaks: backends that keep their data, services on fixed ports,
and a round-robin front that spreads every host's requests over both ingests.

The backends are the test servers (``devstack.servers``) set up as production would run them
where it matters for a fault run: Redis with an append-only file synced on every write,
SecantusDB on disk with ``--sync-on-commit`` (without it a SIGKILL loses acknowledged
writes), RabbitMQ with a vhost of its own whose connections a fault can close.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from devstack import ROOT
from devstack.ports import HOST, free_port
from devstack.servers import RabbitServer, RedisServer, SecantusServer

VHOST = "chaos"


class DurableRedis(RedisServer):
    """Redis that survives its own restart: an append-only file, fsynced on every write."""

    durable = True


class DurableSecantus(SecantusServer):
    """SecantusDB on disk, committing to disk before it acknowledges (survives SIGKILL)."""

    def command(self) -> list[str]:
        return [*super().command(), "--sync-on-commit"]


def add_vhost(rabbit: RabbitServer) -> str:
    """A vhost for the run (guest may use it); returns the services' AMQP URL."""
    rabbit.ctl("add_vhost", VHOST)
    rabbit.ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@{HOST}:{rabbit.port}/{VHOST}"


class Service:
    """A service process (``python -m services.<name>``) that keeps its port across restarts."""

    def __init__(self, name: str, label: str, env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.label = label
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = {**os.environ, **env, "CARVE_HTTP_PORT": str(self.port)}
        self.log_path = logdir / f"{label}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False  # SIGSTOPped

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} exited; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.label} not up in {timeout} s; see {self.log_path}")

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal it and wait for it to exit (SIGKILL once ``timeout`` has passed)."""
        if self.stopped:
            self.send(signal.SIGCONT)
            self.stopped = False
        self.send(sig)
        if self.proc is None:
            return
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait, 10)

    async def restart(self, sig: int) -> None:
        await self.stop(sig)
        self.start()
        await self.wait_ready()


# Hop-by-hop and length headers are the front's own business.
_SKIP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@contextlib.asynccontextmanager
async def round_robin_front(upstreams: list[str], limit: int) -> AsyncIterator[str]:
    """A stand-in for NGINX with two upstreams: each request to the next ingest, and to the
    other one when that one refuses the connection (the request was not sent, so this is
    safe); 502 in text when neither answers. Yields the front's base URL."""
    turn = itertools.cycle(range(len(upstreams)))
    timeout = aiohttp.ClientTimeout(total=30)
    http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        first = next(turn)
        for i in range(len(upstreams)):
            url = upstreams[(first + i) % len(upstreams)] + request.path_qs
            try:
                # A file-like body: aiohttp warns about raw bytes over 1 MiB (a 1 MiB block
                # in base64), and the suite turns warnings into errors (500s to hosts).
                async with http.post(url, data=io.BytesIO(body), headers=headers) as resp:
                    raw = await resp.read()
                    return web.Response(
                        status=resp.status,
                        body=raw,
                        headers={"Content-Type": resp.headers.get("Content-Type", "text/plain")},
                    )
            except aiohttp.ClientConnectorError:
                continue  # refused before anything was sent: the next upstream
            except (aiohttp.ClientError, TimeoutError):
                break  # sent, then lost: as NGINX, do not send a POST twice
        return web.Response(status=502, text="bad gateway: no ingest answered\n")

    app = web.Application(client_max_size=limit)
    app.router.add_post("/{path:.*}", forward)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()
        await http.close()
